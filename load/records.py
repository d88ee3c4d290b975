"""What one request measured, and how a streamed response turns into token arrival times.

Kept free of Locust and gevent (no monkey-patching on import) so metrics, reports and tests can
use it in any process. Timestamps are integer nanoseconds relative to the start of the step in
the process that made the request (`time.perf_counter_ns()` minus the step's origin): exact,
and comparable between workers to within the latency of the message that starts a step.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from spec.sse import SSEParser

# Every kind of failed request, in the order a report lists them.
ERROR_KINDS = ("connection_refused", "connection_closed", "timeout", "transport", "http_429", "http_4xx",
               "http_5xx", "truncated_stream", "error_event", "protocol", "cut_off")


def http_error_kind(status: int) -> str:
    return "http_429" if status == 429 else ("http_5xx" if status >= 500 else "http_4xx")


@dataclass
class RequestRecord:
    """One request: when it was meant to go, when it went, when each byte that mattered came.

    `token_ns` holds the arrival of every token event: an SSE event whose delta carried a
    generated token of any kind (content, reasoning or a tool call; the API sends one event per
    token), so a reasoning model's first token is its first reasoning token. `first_content_ns`
    is the first event with content. `usage_completion` is the server's own count (reasoning
    included); `chunk_tokens` ours, of every kind, and `*_events` ours per kind.
    """

    send_ns: int
    stream: bool
    intended_ns: int | None = None
    first_byte_ns: int | None = None
    first_token_ns: int | None = None
    first_content_ns: int | None = None
    end_ns: int | None = None
    token_ns: list[int] = field(default_factory=list)
    chunk_tokens: int = 0
    content_events: int = 0
    reasoning_events: int = 0  # delta.reasoning_content or delta.reasoning
    tool_call_events: int = 0  # deltas with tool-call argument text
    tool_calls: int = 0  # calls the answer made (choice 0's message, or the calls opened in the stream)
    usage_prompt: int | None = None
    usage_completion: int | None = None
    usage_reasoning: int | None = None  # usage.completion_tokens_details.reasoning_tokens, when sent
    status: int | None = None
    error: str | None = None
    # What kind of failure `error` is (ERROR_KINDS), for counting; None while the request is fine.
    error_kind: str | None = None
    retry_after: str | None = None  # the Retry-After header of a 429 (None: the server sent none)
    retried: bool = False  # sent twice: the first attempt met a stale keep-alive connection
    worker: int = 0
    # What the workload asked for (load.workloads.PlannedRequest), beside what the server served:
    max_tokens: int | None = None
    requested_prompt_tokens: int | None = None
    prefix_blocks: list[list[Any]] = field(default_factory=list)  # [id, tokens] of shared prefix blocks
    turn: int | None = None
    request_id: str | None = None  # the answer's `id` (e.g. chatcmpl-...), to find it in the server's logs

    def fail(self, kind: str, message: str) -> None:
        """Record the first failure of this request (later ones are consequences of it)."""
        if self.error is None:
            self.error, self.error_kind = message, kind

    @property
    def connection_refused(self) -> bool:
        """Nothing listened at the endpoint: a run of these means it is gone."""
        return self.error_kind == "connection_refused"

    @property
    def stale_connection(self) -> bool:
        """The first attempt died before any byte of the answer (retried once, never twice)."""
        return not self.retried and self.error_kind == "connection_closed" and self.status is None

    @property
    def ok(self) -> bool:
        """Finished with 200 and no protocol or transport error."""
        return self.error is None and self.status == 200 and self.end_ns is not None

    @property
    def output_tokens(self) -> int:
        """Tokens generated: the server's usage count, or the events we counted when it gave none."""
        return self.usage_completion if self.usage_completion is not None else self.chunk_tokens

    @property
    def reasoning_tokens(self) -> int:
        """Reasoning tokens: the server's usage count when it gives one, else the reasoning events we
        counted (0 for a non-streamed answer without that count)."""
        return self.usage_reasoning if self.usage_reasoning is not None else self.reasoning_events

    @property
    def token_count_mismatch(self) -> bool:
        """A stream whose token events (every kind) disagree with its usage.completion_tokens."""
        # A tool call's name and wrapper are generated tokens no delta carries one by one: not judged.
        return (self.stream and not self.tool_calls and self.usage_completion is not None
                and self.usage_completion != self.chunk_tokens)

    def to_wire(self) -> dict[str, Any]:
        """A plain dict (for Locust's worker-to-master messages and JSON)."""
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> RequestRecord:
        return cls(**data)


class StreamTimer:
    """Feed an SSE body line by line as it arrives; it stamps token events and reads usage.

    Uses the conformance suite's strict WHATWG parser, so framing that conformance would flag
    (a missing `[DONE]`, data after it, a non-JSON event) also surfaces here as a request error.
    """

    def __init__(self, record: RequestRecord) -> None:
        self.record = record
        self.parser = SSEParser()
        self.done = False
        self.pieces: list[str] = []  # the first choice's content, for workloads that carry it on

    @property
    def text(self) -> str:
        """The answer's text so far (choice 0)."""
        return "".join(self.pieces)

    def feed(self, data: bytes, now_ns: int) -> None:
        """Bytes just received (any split), with the time they arrived."""
        for event in self.parser.feed(data):
            self._event(event.data, now_ns)

    def close(self, now_ns: int) -> None:
        """End of the body: finish the record, flag a stream that ended badly."""
        for event in self.parser.close():
            self._event(event.data, now_ns)
        record = self.record
        record.end_ns = now_ns
        if not self.done:
            record.fail("truncated_stream", "stream ended without data: [DONE]")

    def _event(self, data: str, now_ns: int) -> None:
        record = self.record
        if self.done:
            record.fail("protocol", "data after [DONE]")
            return
        if data == "[DONE]":
            self.done = True
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            record.fail("protocol", f"event is not JSON: {data[:80]!r}")
            return
        if not isinstance(chunk, dict):
            record.fail("protocol", "event is not a JSON object")
            return
        if "error" in chunk:
            record.fail("error_event", f"error event: {json.dumps(chunk['error'])[:200]}")
            return
        if record.request_id is None and isinstance(chunk.get("id"), str):
            record.request_id = chunk["id"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            kinds = token_kinds(delta)
            opened = calls_opened(delta)
            if opened:
                self.record.tool_calls += opened
                if self.record.first_token_ns is None:  # TTFT: a call's first delta, even before its arguments
                    self.record.first_token_ns = now_ns
            if kinds:
                self._token(kinds, now_ns)
                if "content" in kinds and choice.get("index", 0) == 0:
                    self.pieces.append(delta["content"])
                break  # one event is one token, whichever choices it carries
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            read_usage(record, usage)

    def _token(self, kinds: frozenset[str], now_ns: int) -> None:
        """Stamp one token event; count it under each kind it carried."""
        record = self.record
        record.chunk_tokens += 1
        record.token_ns.append(now_ns)
        if record.first_token_ns is None:
            record.first_token_ns = now_ns
        if "content" in kinds:
            record.content_events += 1
            if record.first_content_ns is None:
                record.first_content_ns = now_ns
        record.reasoning_events += "reasoning" in kinds
        record.tool_call_events += "tool_call" in kinds


# The delta keys a reasoning model sends its reasoning under: DeepSeek's and older vLLM's, newer vLLM's.
REASONING_KEYS = ("reasoning_content", "reasoning")


def token_kinds(delta: Any) -> frozenset[str]:
    """Which kinds of generated token a delta carries: content, reasoning, tool_call (argument text)
    (empty: none, e.g. the role-only first delta, a call's opening delta with arguments "", an
    empty string or null values)."""
    if not isinstance(delta, dict):
        return frozenset()
    kinds = set()
    if isinstance(delta.get("content"), str) and delta["content"]:
        kinds.add("content")
    if any(isinstance(delta.get(key), str) and delta[key] for key in REASONING_KEYS):
        kinds.add("reasoning")
    if any(isinstance(item, dict) and isinstance(item.get("function"), dict) and item["function"].get("arguments")
           for item in _tool_items(delta)):
        kinds.add("tool_call")
    return frozenset(kinds)


def _tool_items(delta: dict[str, Any]) -> list[Any]:
    items = delta.get("tool_calls")
    return items if isinstance(items, list) else []


def calls_opened(delta: Any) -> int:
    """How many tool calls a delta opens: items carrying a call's id (OpenAI sends it once per call,
    in the call's first delta, with its name and arguments "")."""
    if not isinstance(delta, dict):
        return 0
    return sum(1 for item in _tool_items(delta) if isinstance(item, dict) and item.get("id"))


def read_usage(record: RequestRecord, usage: dict[str, Any]) -> None:
    """The server's counts from a usage object, reasoning tokens included when it details them."""
    record.usage_prompt = usage.get("prompt_tokens")
    record.usage_completion = usage.get("completion_tokens")
    details = usage.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
    record.usage_reasoning = reasoning if isinstance(reasoning, int) else None


def read_json_body(record: RequestRecord, body: bytes, now_ns: int) -> str | None:
    """Finish a non-streamed record from its JSON body (usage and an error envelope); the answer's
    text (choice 0) when there is one."""
    record.end_ns = now_ns
    status = record.status or 0
    try:
        payload = json.loads(body)
    except ValueError:
        kind = "protocol" if status == 200 else http_error_kind(status)
        record.fail(kind, f"HTTP {status}, body is not JSON: {body[:80]!r}")
        return None
    if not isinstance(payload, dict):
        record.fail("protocol" if status == 200 else http_error_kind(status), "body is not a JSON object")
        return None
    if status != 200:
        record.fail(http_error_kind(status), f"HTTP {status}: {json.dumps(payload.get('error', payload))[:200]}")
        return None
    if isinstance(payload.get("id"), str):
        record.request_id = payload["id"]
    usage = payload.get("usage")
    read_usage(record, usage if isinstance(usage, dict) else {})
    choices = payload.get("choices") or [{}]
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    record.tool_calls = len(calls) if isinstance(calls, list) else 0
    return content if isinstance(content, str) else None
