"""What a check works with: the client, schema validators from the spec, and shared helpers
that turn a bad response into a `CheckFailed` carrying the exchange that shows it."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import jsonschema

import spec
from conformance.registry import CheckFailed, NotSupported
from conformance.sse import SSEParseResult, parse_sse
from conformance.target import Client, Exchange, Target


@functools.cache
def validator(name: str) -> jsonschema.Draft202012Validator:
    """A validator for the spec component `name` (built once)."""
    return jsonschema.Draft202012Validator(spec.schema(name))


def schema_errors(name: str, instance: Any) -> list[str]:
    """Readable schema violations of `instance` against component `name` (empty when valid)."""
    errors = sorted(validator(name).iter_errors(instance), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors[:5]]


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

    def usage_chunks(self) -> list[int]:
        """Indices (into `chunks`) of chunks that carry a non-null usage."""
        return [i for i, chunk in enumerate(self.chunks) if chunk.get("usage") is not None]


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

    @staticmethod
    def fail(message: str, exchange: Exchange | None = None) -> None:
        raise CheckFailed(message, exchange)

    def expect(self, condition: object, message: str, exchange: Exchange | None = None) -> None:
        """Fail with `message` unless `condition` holds."""
        if not condition:
            raise CheckFailed(message, exchange or self.last_exchange())

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
        self.expect(exchange.status == 200, f"expected 200, got {exchange.status}", exchange)
        self.expect(exchange.content_type == "application/json",
                    f"expected application/json, got {exchange.content_type!r}", exchange)
        try:
            data = exchange.json()
        except ValueError as exc:
            raise CheckFailed(f"body is not JSON: {exc}", exchange) from exc
        problems = schema_errors("ChatCompletion", data)
        self.expect(not problems, "chat.completion body breaks the spec: " + "; ".join(problems), exchange)
        return exchange, data

    def ok_stream(self, body: dict[str, Any]) -> StreamResult:
        """Send a streaming request that must answer 200 text/event-stream; parse it strictly."""
        exchange = self.chat({**body, "stream": True})
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
        self, exchange: Exchange, statuses: Iterable[int], *, param: str | None = None, what: str = ""
    ) -> dict[str, Any]:
        """The response must be one of `statuses` with a valid error envelope (naming `param`)."""
        allowed = sorted(set(statuses))
        prefix = f"{what}: " if what else ""
        self.expect(exchange.status < 500, f"{prefix}server error {exchange.status} on a client mistake",
                    exchange)
        self.expect(exchange.status in allowed,
                    f"{prefix}expected HTTP {' or '.join(map(str, allowed))}, got {exchange.status}", exchange)
        try:
            data = exchange.json()
        except ValueError as exc:
            raise CheckFailed(f"{prefix}error body is not JSON", exchange) from exc
        problems = schema_errors("ErrorResponse", data)
        self.expect(not problems, f"{prefix}error envelope breaks the spec: " + "; ".join(problems), exchange)
        if param is not None:
            named = data["error"].get("param")
            self.expect(named == param or (isinstance(named, str) and named.split(".")[0].split("[")[0] == param),
                        f"{prefix}error names param {named!r}, expected {param!r}", exchange)
        return data

    # ---- memoized runs shared by semantic checks ------------------------------------------

    def memo(self, key: str, compute: Any) -> Any:
        """Compute once per run (e.g. a seeded baseline several checks derive expectations from)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]
