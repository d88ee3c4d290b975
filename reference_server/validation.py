"""Request validation: the spec's JSON Schema plus the cross-field rules a schema cannot say.

Ranges come only from `spec` (no range is written twice); every error names its parameter.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Any

import jsonschema
import jsonschema_rs

import spec
from reference_server.engines.base import SamplingParams
from reference_server.errors import ApiError
from reference_server.tool_calls import ToolPlan, parse_tool_plan

# The server takes the openai profile's request (the documented one plus OpenAI's tool calling).
PROFILE = "openai"


@dataclass(frozen=True)
class ChatRequest:
    """A validated request with documented defaults applied."""

    model: str
    messages: list[dict[str, Any]]
    max_tokens: int
    stream: bool
    n: int
    stops: list[str]
    context_behavior: str
    sampling: SamplingParams
    tools: ToolPlan | None = None  # None: the request names no tools


@functools.cache
def _validator(api: spec.ApiSpec) -> jsonschema.Draft202012Validator:
    schema = api.request_schema(PROFILE)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@functools.cache
def _fast_validator(api: spec.ApiSpec) -> jsonschema_rs.Draft202012Validator:
    """The same schema compiled by jsonschema-rs: it tells a valid body in ~2 us where `jsonschema`
    takes ~0.2-0.5 ms, all of it before the prompt can start (time to first token). It only ever
    lets a body through: any body it refuses is judged again by `jsonschema`, whose errors are the
    ones reported, so a body is refused only when `jsonschema` refuses it."""
    return jsonschema_rs.Draft202012Validator(api.request_schema(PROFILE))


def _error_param(error: jsonschema.ValidationError) -> str | None:
    """The top-level parameter an error is about (`messages[0].role` -> `messages`)."""
    path = list(error.absolute_path)
    if path:
        return str(path[0])
    if error.validator == "required":
        missing = error.message.split("'")
        return missing[1] if len(missing) > 2 else None
    return None


MESSAGE_CHARS = 300  # an error quotes the offending value: a huge one is cut, never echoed whole


def _inner(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """The error inside an anyOf/oneOf that explains it: from the branches whose `role` fits the
    value (a user message is judged as one, not as a tool message), the most relevant one."""
    if not error.context:
        return jsonschema.exceptions.best_match([error])
    branches: dict[Any, list[jsonschema.ValidationError]] = {}
    for inner in error.context:
        branches.setdefault(inner.schema_path[0] if inner.schema_path else None, []).append(inner)
    fitting = [errors for errors in branches.values()
               if not any(list(inner.relative_path) == ["role"] for inner in errors)]
    if fitting:
        candidates = [inner for errors in fitting for inner in errors]
    else:  # no shape takes this role: the role is what is wrong, and every shape's role is allowed
        roles = [inner for inner in error.context if list(inner.relative_path) == ["role"]]
        allowed: list[Any] = []
        for inner in roles:
            for value in inner.validator_value if inner.validator == "enum" else [inner.validator_value]:
                allowed += [] if value in allowed else [value]
        return jsonschema.ValidationError(f"{roles[0].instance!r} is not one of {allowed}",
                                          path=[*error.absolute_path, "role"])
    return _inner(jsonschema.exceptions.best_match(candidates))


def _describe(error: jsonschema.ValidationError) -> str:
    """'Invalid value for <where>: <why>', where and why from the most relevant error inside
    `error` (for a message matching none of the message shapes, the field inside it that is wrong)."""
    best = _inner(error)
    path = "".join(
        f"[{part}]" if isinstance(part, int) else (f".{part}" if i else str(part))
        for i, part in enumerate(best.absolute_path)
    )
    where = f"'{path}': " if path else ""
    why = best.message if len(best.message) <= MESSAGE_CHARS else best.message[:MESSAGE_CHARS] + "..."
    return f"Invalid value for {where}{why}"


def _has_non_finite(value: Any) -> bool:
    """NaN passes every JSON Schema bound (all comparisons are false), so it is refused first."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_non_finite(item) for item in value)
    return False


def check_schema(body: Any, api: spec.ApiSpec | None = None) -> None:
    """Raise a 400 naming the first offending parameter when `body` breaks the request schema
    (of `api`, by default the packaged spec)."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_type")
    for name, value in body.items():
        if _has_non_finite(value):
            raise ApiError(400, f"Invalid value for '{name}': NaN and Infinity are not JSON numbers.",
                           param=name, code="invalid_value")
    api = api or spec.default()
    if _fast_validator(api).is_valid(body):
        return
    errors = sorted(_validator(api).iter_errors(body), key=lambda e: (len(e.absolute_path), e.path))
    if errors:
        # A missing required field is reported before anything nested inside other fields.
        first = min(errors, key=lambda e: (e.validator != "required", len(e.absolute_path)))
        raise ApiError(400, _describe(first), param=_error_param(first), code="invalid_value")


def _value(body: dict[str, Any], name: str, default: Any) -> Any:
    value = body.get(name)
    return default if value is None else value


def _check_requires(body: dict[str, Any], api: spec.ApiSpec) -> None:
    """A parameter present with what its `x-requires` names set otherwise is a 400 naming it."""
    for param in api.parameters:
        if body.get(param.name) is None:
            continue
        for name, wanted in param.requires:
            if _value(body, name, api.parameter(name).absent) != wanted:
                raise ApiError(400, f"{param.name} requires {name} to be {json.dumps(wanted)}.",
                               param=param.name, code="invalid_value")


def parse_request(body: Any, *, vocab_size: int, api: spec.ApiSpec | None = None) -> ChatRequest:
    """Validate `body` against `api` (by default the packaged spec) and return it with defaults
    applied; raise ApiError(400) otherwise."""
    api = api or spec.default()
    check_schema(body, api)
    defaults = api.request_defaults()

    _check_requires(body, api)

    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else list(stop or [])

    logit_bias: dict[int, int] = {}
    for key, bias in (body.get("logit_bias") or {}).items():
        token = int(key)
        if token >= vocab_size:
            raise ApiError(
                400,
                f"logit_bias names token id {token}, but the vocabulary has {vocab_size} tokens.",
                param="logit_bias",
                code="invalid_value",
            )
        logit_bias[token] = bias

    fmt = body.get("response_format") or {}
    json_mode = fmt.get("type") == "json_object"
    json_schema = fmt.get("schema") if json_mode else None
    if json_schema is not None:
        try:
            jsonschema.validators.validator_for(json_schema).check_schema(json_schema)
        except jsonschema.SchemaError as exc:
            raise ApiError(
                400,
                f"response_format.schema is not a valid JSON Schema: {exc.message}",
                param="response_format",
                code="invalid_value",
            ) from exc

    max_tokens = int(body["max_tokens"])  # JSON Schema counts 1.0 as an integer
    sampling = SamplingParams.from_request(body, api, max_tokens=max_tokens, logit_bias=logit_bias,
                                           json_mode=json_mode, json_schema=json_schema)
    return ChatRequest(
        model=body["model"],
        messages=body["messages"],
        max_tokens=max_tokens,
        stream=bool(_value(body, "stream", defaults["stream"])),
        n=int(_value(body, "n", defaults["n"])),
        stops=stops,
        context_behavior=_value(
            body, "context_length_exceeded_behavior", defaults["context_length_exceeded_behavior"]
        ),
        sampling=sampling,
        tools=parse_tool_plan(body, api.profile_request_defaults(PROFILE)["parallel_tool_calls"]),
    )


def fit_to_context(request: ChatRequest, prompt_tokens: int, context_length: int) -> int:
    """The max_tokens to use: lowered to fit the context, or a 400 when the request says 'error'."""
    if prompt_tokens >= context_length:
        raise ApiError(
            400,
            f"The prompt is {prompt_tokens} tokens, which leaves no room in the model's "
            f"context of {context_length} tokens.",
            param="messages",
            code="context_length_exceeded",
        )
    room = context_length - prompt_tokens
    if request.max_tokens <= room:
        return request.max_tokens
    if request.context_behavior == "error":
        raise ApiError(
            400,
            f"prompt ({prompt_tokens} tokens) + max_tokens ({request.max_tokens}) exceeds the "
            f"model's context of {context_length} tokens.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return room
