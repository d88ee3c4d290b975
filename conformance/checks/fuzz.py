"""Schema-generated requests (schemathesis over the spec's chat operation), in two modes.

Positive: requests the spec accepts must be answered 200 with a body (JSON or SSE) that the spec
describes. Negative: requests the spec rejects must be refused, in the error envelope. In both,
never a 5xx. Requests are kept cheap (max_tokens <= 8, n <= 4, short prompts) and the target's
model is used, so what is tested is the request/response contract, not the model's speed.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

import spec
from conformance.context import Context, schema_errors
from conformance.registry import CheckFailed, check
from conformance.target import HEADER_REDACTED, REDACTED, Exchange, Target
from spec.endpoint import auth_headers
from spec.sse import parse_sse

FEATURE = "schema"
MAX_TOKENS = 8
MAX_N = 4
# Positive requests keep prompts short, so no generated prompt can overflow a small context.
MAX_MESSAGES = 6
MAX_CONTENT_CHARS = 48


def feature_fields(api: spec.ApiSpec) -> dict[str, tuple[str, ...]]:
    """Optional request fields per feature (their `x-feature`): a feature the target declares
    unsupported is left out of generated requests (leaving out an optional field never changes
    whether a request is valid)."""
    groups: dict[str, tuple[str, ...]] = {}
    for param in api.parameters:
        if param.feature and not param.required:
            groups[param.feature] = (*groups.get(param.feature, ()), param.name)
    return groups


def _operation(target: Target) -> Any:
    """The spec's chat operation, moved to the path the target serves it at (its API root's)."""
    config = schemathesis.Config.from_dict({"max-stream-events": 1_000_000, "request-timeout": target.timeout_s})
    document = copy.deepcopy(target.api.document)
    chat_path = target.endpoint.chat_path
    document["paths"] = {chat_path: document["paths"][spec.CHAT_PATH]}
    schema = schemathesis.openapi.from_dict(document, config=config)
    return schema[chat_path]["POST"]


def _is_int(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and value.is_integer())


def _short(content: Any) -> Any:
    """Message content cut to MAX_CONTENT_CHARS in all (a string, or text parts), shape kept."""
    if isinstance(content, str):
        return content[:MAX_CONTENT_CHARS]
    if isinstance(content, list):
        parts = content[:2]
        for part in parts:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                part["text"] = part["text"][: MAX_CONTENT_CHARS // 2]
        return parts
    return content


def _shape(body: Any, target: Target, mode: GenerationMode) -> None:
    """Make a generated body cheap and aimed at the target without changing whether it is valid."""
    if not isinstance(body, dict):
        return
    groups = feature_fields(target.api)
    for feature in target.skip_features:
        for name in groups.get(feature, ()):
            body.pop(name, None)
    model = body.get("model")
    if isinstance(model, str) and model:
        body["model"] = target.model
    max_tokens = body.get("max_tokens")
    if _is_int(max_tokens) and max_tokens > MAX_TOKENS:
        body["max_tokens"] = type(max_tokens)(MAX_TOKENS)
    n = body.get("n")
    n_range = target.api.parameter_ranges("documented").get("n")
    if _is_int(n) and n > MAX_N and (n_range is None or n_range.contains(n)):
        body["n"] = type(n)(MAX_N)
    if mode is not GenerationMode.POSITIVE:
        return
    # Rules the schema cannot state (or that depend on the model) are satisfied, not fuzzed.
    if body.get("top_logprobs") is not None and body.get("logprobs") is not True:
        body["logprobs"] = True
    if isinstance(body.get("logit_bias"), dict):
        body["logit_bias"] = {str(i): bias for i, bias in enumerate(body["logit_bias"].values())}
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and "schema" in fmt:
        try:
            jsonschema.validators.validator_for(fmt["schema"]).check_schema(fmt["schema"])
        except (jsonschema.SchemaError, TypeError, ValueError):
            del fmt["schema"]
    messages = body.get("messages")
    if isinstance(messages, list):
        del messages[MAX_MESSAGES:]
        for message in messages:
            if isinstance(message, dict) and "content" in message:
                message["content"] = _short(message["content"])


def _exchange(response: Any, target: Target) -> Exchange:
    """The exchange a schemathesis response shows, with the API key left out."""
    request = response.request
    secret = {name.lower() for name, _ in target.headers}
    headers = {}
    for name, value in request.headers.items():
        if name.lower() == "authorization":
            value = f"Bearer {REDACTED}"
        elif name.lower() in secret:
            value = HEADER_REDACTED
        headers[name] = value
    body = request.body
    if isinstance(body, str):
        body = body.encode("utf-8")
    response_headers = {name.lower(): ", ".join(values) if isinstance(values, list) else str(values)
                        for name, values in response.headers.items()}
    return Exchange(method=request.method, url=request.url, headers=headers, body=body,
                    status=response.status_code, response_headers=response_headers, content=response.content,
                    elapsed_s=response.elapsed)


def _sse_problems(content: bytes) -> list[str]:
    parsed = parse_sse(content)
    problems: list[str] = []
    events = list(parsed.events)
    if not events:
        return ["the event stream carries no events"]
    done = [i for i, event in enumerate(events) if event.data == "[DONE]"]
    if len(done) > 1:
        problems.append(f"data: [DONE] sent {len(done)} times")
    if done and done[-1] != len(events) - 1:
        problems.append("data: [DONE] is not the last event")
    if not done:
        problems.append("the stream does not end with data: [DONE]")
    for index, event in enumerate(events):
        if event.data == "[DONE]":
            continue
        try:
            chunk = json.loads(event.data)
        except ValueError:
            problems.append(f"event {index}: data is not JSON: {event.data[:120]!r}")
            continue
        errors = schema_errors("ChatCompletionChunk", chunk)
        if errors:
            problems.append(f"event {index}: chunk breaks the spec: " + "; ".join(errors))
    return problems[:5]


def _body_problems(response: Any) -> list[str]:
    """Our own rules: never a 5xx, 200 bodies as the spec describes. An error's status (which
    4xx) and envelope are judged once, by the errors checks, not once per generated request."""
    status = response.status_code
    content_type = ", ".join(response.headers.get("content-type", [])).split(";")[0].strip().lower()
    if status >= 500:
        return [f"server error {status}"]
    if not 200 <= status < 300:
        return []
    if content_type == "text/event-stream":
        return _sse_problems(response.content)
    try:
        data = json.loads(response.content)
    except ValueError:
        return [f"HTTP {status} {content_type} body is not JSON"]
    errors = schema_errors("ChatCompletion", data)
    return ["chat.completion body breaks the spec: " + "; ".join(errors)] if errors else []


def _brief(text: str, lines: int = 3, chars: int = 400) -> str:
    """The first lines of a schemathesis failure (its full text repeats whole schemas)."""
    kept = [line for line in text.strip().splitlines() if line.strip()][:lines]
    short = " | ".join(kept)
    return short if len(short) <= chars else short[: chars - 3] + "..."


def _schemathesis_problems(case: Any, response: Any, mode: GenerationMode, target: Target) -> list[str]:
    if mode is GenerationMode.NEGATIVE:  # refused with a 4xx is the rule; which 4xx and its body are not
        checks = [not_a_server_error, negative_data_rejection]
    else:
        checks = [not_a_server_error, status_code_conformance, content_type_conformance,
                  response_schema_conformance, positive_data_acceptance]
        if not 200 <= response.status_code < 300:  # an error envelope is errors.envelope's, judged once
            checks.remove(response_schema_conformance)
    try:
        case.validate_response(response, checks=checks, transport_kwargs={"base_url": target.endpoint.origin})
    except FailureGroup as group:
        return [_brief(f"{failure.title}: {failure.message}") for failure in group.exceptions]
    except AssertionError as exc:  # a single failure, raised on its own
        return [_brief(str(exc))]
    return []


def fuzz(ctx: Context, mode: GenerationMode) -> None:
    """Send `target.max_examples` generated requests; fail on the first that breaks a rule."""
    target = ctx.target
    operation = _operation(target)
    headers = auth_headers(target.api_key, dict(target.headers)) or None
    strategy = operation.as_strategy(generation_mode=mode, headers=headers)
    found: list[tuple[int, str, Exchange | None]] = []
    sent = [0]
    session = requests.Session()

    @hypothesis_seed(target.seed)
    @settings(max_examples=target.max_examples, database=None, derandomize=True, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @given(case=strategy)
    def run(case: Any) -> None:
        if found:
            return  # the first failing case is the report; generate the rest without sending
        _shape(case.body, target, mode)
        meta = case.meta  # re-judge the case after shaping
        sent[0] += 1
        try:
            response = case.call(base_url=target.endpoint.origin, session=session, timeout=target.timeout_s)
        except requests.RequestException as exc:
            found.append((sent[0], f"transport error: {exc.__class__.__name__}: {exc}", None))
            return
        problems = _schemathesis_problems(case, response, mode, target) + _body_problems(response)
        if problems:
            what = ""
            if meta is not None and getattr(meta.phase.data, "description", None):
                what = f" [{meta.phase.data.description}]"
            found.append((sent[0], "; ".join(dict.fromkeys(problems)) + what, _exchange(response, target)))

    try:
        run()
    finally:
        session.close()
    if found:
        number, message, exchange = found[0]
        if exchange is not None:
            ctx.client.exchanges.append(exchange)
        raise CheckFailed(f"{mode.value} request {number} of {target.max_examples}: {message}", exchange)


@check("schema.fuzz_positive", FEATURE, "fuzz")
def fuzz_positive(ctx: Context) -> None:
    """Requests generated from the spec's request schema are accepted with a response the spec describes."""
    fuzz(ctx, GenerationMode.POSITIVE)


@check("schema.fuzz_negative", FEATURE, "fuzz")
def fuzz_negative(ctx: Context) -> None:
    """Requests that break the spec's request schema are rejected (4xx) in the error envelope."""
    fuzz(ctx, GenerationMode.NEGATIVE)
