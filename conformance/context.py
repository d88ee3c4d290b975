"""What a check works with: the client, schema validators from the spec, and shared helpers
that turn a bad response into a `CheckFailed` carrying the exchange that shows it."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import jsonschema

import spec
from conformance.registry import CheckFailed, NotSupported
from conformance.target import Client, Exchange, Target
from spec.sse import SSEParseResult, parse_sse


@functools.cache
def validator(name: str) -> jsonschema.Draft202012Validator:
    """A validator for the spec component `name` (built once)."""
    return jsonschema.Draft202012Validator(spec.schema(name))


def schema_errors(name: str, instance: Any) -> list[str]:
    """Readable schema violations of `instance` against component `name` (empty when valid)."""
    errors = sorted(validator(name).iter_errors(instance), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors[:5]]


def error_param(data: Any) -> str | None:
    """The `error.param` of an error body, or None when it has no such string."""
    error = data.get("error") if isinstance(data, dict) else None
    param = error.get("param") if isinstance(error, dict) else None
    return param if isinstance(param, str) else None


# How a request validator may prefix the parameter it names (FastAPI/pydantic: loc ("body", "max_tokens")
# joined as "body.max_tokens"). Such a name still names the parameter: the form is judged once, by
# errors.param_bare_name (should-level; spec x-decisions "error.param (form)"), not by every check.
LOCATION_PREFIXES = ("body.",)


def bare_param(named: str) -> str:
    """`named` without a validator's location prefix: 'body.max_tokens' -> 'max_tokens'."""
    for prefix in LOCATION_PREFIXES:
        if named.startswith(prefix) and len(named) > len(prefix):
            return named[len(prefix):]
    return named


def names_param(named: str, param: str) -> bool:
    """Whether the error's `param` names `param` (itself, or a part of it: `logit_bias.13`, `stop[2]`),
    also in a validator's location form (`body.max_tokens`)."""
    named = bare_param(named)
    return named == param or named.split(".")[0].split("[")[0] == param


# Where reasoning models put their reasoning, apart from the answer: a delta's or message's
# `reasoning_content` (DeepSeek, older vLLM) or `reasoning` (newer vLLM). Checks of the answer read
# `content` only; checks of what was sampled read both (`generated_text`), and compare counts of
# answer tokens with usage less its reasoning tokens (`content_tokens`).
REASONING_FIELDS = ("reasoning_content", "reasoning")


def reasoning_of(part: Any) -> str:
    """The reasoning text a message or a delta carries ('' when none): under the first key that has
    some (a proxy that fills both keys with the same text is not read twice)."""
    if not isinstance(part, dict):
        return ""
    return next((part[name] for name in REASONING_FIELDS if isinstance(part.get(name), str) and part[name]), "")


def generated_text(message: Any) -> str:
    """Every sampled token's text of a message: its reasoning, then its content."""
    content = message.get("content") if isinstance(message, dict) else None
    return reasoning_of(message) + (content if isinstance(content, str) else "")


def content_tokens(usage: dict[str, Any]) -> int:
    """usage.completion_tokens less the reasoning tokens it counts (completion_tokens_details)."""
    details = usage.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
    return usage["completion_tokens"] - (reasoning if isinstance(reasoning, int) else 0)


@dataclass
class StreamResult:
    """A streamed response, parsed strictly."""

    exchange: Exchange
    parsed: SSEParseResult
    chunks: list[dict[str, Any]] = field(default_factory=list)  # decoded JSON data events, in order
    done_positions: list[int] = field(default_factory=list)  # event indices whose data is [DONE]
    undecodable: list[tuple[int, str]] = field(default_factory=list)  # (event index, data)

    def texts(self) -> dict[int, str]:
        """Concatenated delta content per choice index."""
        out: dict[int, str] = {}
        for chunk in self.chunks:
            for choice in chunk.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if isinstance(content, str):
                    out[choice.get("index", 0)] = out.get(choice.get("index", 0), "") + content
        return out

    def reasonings(self) -> dict[int, str]:
        """Concatenated delta reasoning per choice index (reasoning_content or reasoning)."""
        out: dict[int, str] = {}
        for chunk in self.chunks:
            for choice in chunk.get("choices") or []:
                thought = reasoning_of(choice.get("delta"))
                if thought:
                    out[choice.get("index", 0)] = out.get(choice.get("index", 0), "") + thought
        return out

    def finish_reasons(self) -> dict[int, list[str]]:
        """Every non-null finish_reason seen, per choice index."""
        out: dict[int, list[str]] = {}
        for chunk in self.chunks:
            for choice in chunk.get("choices") or []:
                if choice.get("finish_reason") is not None:
                    out.setdefault(choice.get("index", 0), []).append(choice["finish_reason"])
        return out

    def logprob_tokens(self) -> dict[int, list[dict[str, Any]]]:
        """Logprob entries per choice index, in stream order."""
        out: dict[int, list[dict[str, Any]]] = {}
        for chunk in self.chunks:
            for choice in chunk.get("choices") or []:
                content = (choice.get("logprobs") or {}).get("content") or []
                out.setdefault(choice.get("index", 0), []).extend(content)
        return out


class Context:
    """Per-run state shared by checks: the target, the client and memoized baseline runs."""

    def __init__(self, target: Target, client: Client | None = None) -> None:
        self.target = target
        self.client = client or Client(target)
        self._memo: dict[str, Any] = {}

    # ---- basics ---------------------------------------------------------------------------

    def uses(self, *features: str) -> None:
        """Declare that this check relies on `features`; a skipped one makes it not supported."""
        missing = sorted(set(features) & self.target.skip_features)
        if missing:
            raise NotSupported(f"relies on {', '.join(missing)}, declared unsupported")

    @staticmethod
    def lacks(feature: str, judged_by: str) -> NoReturn:
        """The endpoint does not provide `feature`, which this check needs: not supported, not failed
        (one deviation, one failure: the check `judged_by` fails for it)."""
        raise NotSupported(f"relies on {feature}, which the endpoint does not provide ({judged_by} fails for that)")

    def lacks_logprobs(self) -> NoReturn:
        """No logprobs at all for `logprobs: true`: logprobs.shape's failure, not supported elsewhere."""
        self.lacks("logprobs (logprobs: true was accepted but no logprobs.content came back)", "logprobs.shape")

    @staticmethod
    def fail(message: str, exchange: Exchange | None = None) -> None:
        raise CheckFailed(message, exchange)

    def expect(self, condition: object, message: str, exchange: Exchange | None = None,
               cause: str | None = None) -> None:
        """Fail with `message` unless `condition` holds (`cause`: see CheckFailed)."""
        if not condition:
            raise CheckFailed(message, exchange or self.last_exchange(), cause)

    def last_exchange(self) -> Exchange | None:
        return self.client.exchanges[-1] if self.client.exchanges else None

    def body(self, **params: Any) -> dict[str, Any]:
        """A small valid request for the target's model with `params` merged in."""
        return self.client.chat_body(**params)

    # ---- requests with their basic contract enforced ----------------------------------------

    def chat(self, body: Any, **kwargs: Any) -> Exchange:
        return self.client.chat(body, **kwargs)

    def ok_json(self, body: dict[str, Any]) -> tuple[Exchange, dict[str, Any]]:
        """Send a non-stream request that must succeed with a schema-valid `chat.completion`."""
        exchange = self.chat({**body, "stream": False})
        return exchange, self.completion(exchange)

    def completion(self, exchange: Exchange) -> dict[str, Any]:
        """What `ok_json` holds a sent exchange to: 200 application/json, a schema-valid body.

        For a check that must look at the status first (e.g. a 400 it tolerates) before judging.
        """
        self.expect(exchange.status == 200, f"expected 200, got {exchange.status}", exchange)
        self.expect(exchange.content_type == "application/json",
                    f"expected application/json, got {exchange.content_type!r}", exchange)
        try:
            data = exchange.json()
        except ValueError as exc:
            raise CheckFailed(f"body is not JSON: {exc}", exchange) from exc
        problems = schema_errors("ChatCompletion", data)
        self.expect(not problems, "chat.completion body breaks the spec: " + "; ".join(problems), exchange)
        return data

    def ok_stream(self, body: dict[str, Any]) -> StreamResult:
        """Send a streaming request that must answer 200 text/event-stream; parse it strictly."""
        return self.stream_of(self.chat({**body, "stream": True}))

    def stream_of(self, exchange: Exchange) -> StreamResult:
        """What `ok_stream` holds a sent streaming exchange to (for a check that looks at the status
        first): 200 text/event-stream, parsed strictly."""
        self.expect(exchange.status == 200, f"expected 200, got {exchange.status}", exchange)
        self.expect(exchange.content_type == "text/event-stream",
                    f"expected text/event-stream, got {exchange.content_type!r}", exchange)
        result = StreamResult(exchange=exchange, parsed=parse_sse(exchange.content))
        for index, event in enumerate(result.parsed.events):
            if event.data == "[DONE]":
                result.done_positions.append(index)
                continue
            try:
                chunk = json.loads(event.data)
            except ValueError:
                result.undecodable.append((index, event.data[:200]))
                continue
            result.chunks.append(chunk)
        return result

    def expect_error(
        self, exchange: Exchange, statuses: Iterable[int], *, param: str | tuple[str, ...] | None = None,
        what: str = "", exact: bool = False,
    ) -> dict[str, Any]:
        """A client mistake must be refused: a 4xx, never accepted nor a 5xx, naming `param` (or one of
        several) if given.

        `statuses` are what the spec answers. Which 4xx it is (422 for 400) is a should-level
        matter judged once, by the errors.status_* checks, and the envelope's shape once, by
        errors.envelope: one deviation, one failure. `exact` holds the status to `statuses` here
        (e.g. 401 for a missing key). Returns the body as JSON, {} when it is not a JSON object.
        """
        allowed = " or ".join(map(str, sorted(set(statuses))))
        prefix = f"{what}: " if what else ""
        status = exchange.status
        self.expect(status < 500, f"{prefix}server error {status} on a client mistake", exchange,
                    cause=f"a client mistake answered {status} (a server error)")
        if exact:
            self.expect(status in set(statuses), f"{prefix}expected HTTP {allowed}, got {status}", exchange)
        self.expect(400 <= status < 500,
                    f"{prefix}expected HTTP {allowed}, got {status}: a client mistake must be refused with a 4xx",
                    exchange, cause=f"a client mistake answered {status}, not refused with a 4xx")
        try:
            data = exchange.json()
        except ValueError:
            data = None
        if param is not None:
            params = (param,) if isinstance(param, str) else param
            expected = " or ".join(map(repr, params))
            named = error_param(data)
            if named is not None:
                self.expect(any(names_param(named, p) for p in params),
                            f"{prefix}error names param {named!r}, expected {expected}", exchange)
            else:  # no `param` field (the envelope check judges that): the text must name it
                text = exchange.content.decode("utf-8", errors="replace")
                self.expect(any(re.search(rf"\b{re.escape(p)}\b", text) for p in params),
                            f"{prefix}the error names no param and its text never mentions {expected}", exchange)
        return data if isinstance(data, dict) else {}

    # ---- memoized runs shared by semantic checks ------------------------------------------

    def memo(self, key: str, compute: Any) -> Any:
        """Compute once per run (e.g. a seeded baseline several checks derive expectations from)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]
