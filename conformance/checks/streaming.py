"""Strict SSE checks of streamed responses, parsed with our own WHATWG parser.

Each check looks at one rule, so a report names exactly what a server got wrong. Streams are
shared through `ctx.memo`: the same two requests serve every check here.
"""

from __future__ import annotations

import json

from conformance.context import Context, StreamResult, schema_errors
from conformance.registry import check
from conformance.sse import split_utf8_events

UNICODE_PROMPT = ("Write a few words in French, German and Japanese with accents and an emoji, "
                  "like café, über, 日本, 🙂.")


def _stream_n2(ctx: Context) -> StreamResult:
    ctx.uses("n")
    return ctx.memo("streaming.n2", lambda: ctx.ok_stream(ctx.body(n=2, max_tokens=8, seed=ctx.target.seed)))


def _stream_n1(ctx: Context) -> StreamResult:
    return ctx.memo("streaming.n1", lambda: ctx.ok_stream(ctx.body(max_tokens=8, seed=ctx.target.seed)))


@check("streaming.content_type", "streaming", "framing")
def content_type(ctx: Context) -> None:
    """A streamed answer is 200 text/event-stream."""
    _stream_n1(ctx)  # ok_stream enforces status and content type


@check("streaming.framing", "streaming", "framing")
def framing(ctx: Context) -> None:
    """The stream parses cleanly: no warnings, valid UTF-8, no unterminated event, only JSON or [DONE]."""
    result = _stream_n1(ctx)
    parsed, exchange = result.parsed, result.exchange
    ctx.expect(not parsed.warnings, "SSE parser warnings: " + "; ".join(parsed.warnings[:3]), exchange)
    ctx.expect(not parsed.invalid_utf8, "invalid UTF-8 in the stream: " + "; ".join(parsed.invalid_utf8[:3]),
               exchange)
    ctx.expect(parsed.trailing_incomplete is None,
               f"the stream ends inside an event: {parsed.trailing_incomplete!r}", exchange)
    ctx.expect(parsed.events, "the stream carried no events", exchange)
    ctx.expect(not result.undecodable, f"event data is neither a JSON object nor [DONE]: {result.undecodable[:2]}",
               exchange)
    for index, event in enumerate(parsed.events):
        if event.data != "[DONE]":
            ctx.expect(isinstance(json.loads(event.data), dict), f"event {index} is JSON but not an object",
                       exchange)


@check("streaming.chunk_schema", "streaming", "schema")
def chunk_schema(ctx: Context) -> None:
    """Every JSON event is a `chat.completion.chunk` as the spec describes it."""
    for result in (_stream_n1(ctx), _stream_n2(ctx)):
        for index, chunk in enumerate(result.chunks):
            problems = schema_errors("ChatCompletionChunk", chunk)
            ctx.expect(not problems, f"chunk {index} breaks the spec: " + "; ".join(problems), result.exchange)


@check("streaming.constant_fields", "streaming", "semantic")
def constant_fields(ctx: Context) -> None:
    """id, created and model are the same in every chunk; object is chat.completion.chunk."""
    result = _stream_n2(ctx)
    ctx.expect(result.chunks, "no JSON chunks in the stream", result.exchange)
    first = result.chunks[0]
    for index, chunk in enumerate(result.chunks):
        ctx.expect(chunk.get("object") == "chat.completion.chunk",
                   f"chunk {index} has object {chunk.get('object')!r}", result.exchange)
        for key in ("id", "created", "model"):
            ctx.expect(chunk.get(key) == first.get(key),
                       f"chunk {index} has {key} {chunk.get(key)!r}, the first had {first.get(key)!r}",
                       result.exchange)


@check("streaming.role_first", "streaming", "semantic")
def role_first(ctx: Context) -> None:
    """Each choice's first delta carries role assistant."""
    result = _stream_n2(ctx)
    seen: set[int] = set()
    for chunk in result.chunks:
        for choice in chunk.get("choices") or []:
            index = choice.get("index")
            if index in seen:
                continue
            seen.add(index)
            role = (choice.get("delta") or {}).get("role")
            ctx.expect(role == "assistant", f"choice {index}'s first delta has role {role!r}", result.exchange)
    ctx.expect(seen, "no choices in the stream", result.exchange)


@check("streaming.finish_reason_once", "streaming", "semantic")
def finish_reason_once(ctx: Context) -> None:
    """With n=2, each choice index 0..1 gets exactly one non-null finish_reason."""
    result = _stream_n2(ctx)
    reasons = result.finish_reasons()
    ctx.expect(sorted(reasons) == [0, 1], f"finish_reasons seen for choices {sorted(reasons)}, expected [0, 1]",
               result.exchange)
    for index, found in reasons.items():
        ctx.expect(len(found) == 1, f"choice {index} got {len(found)} finish_reasons: {found}", result.exchange)


@check("streaming.done_once_last", "streaming", "framing")
def done_once_last(ctx: Context) -> None:
    """Exactly one `data: [DONE]`, the last event, with nothing after it."""
    result = _stream_n1(ctx)
    events, exchange = result.parsed.events, result.exchange
    ctx.expect(len(result.done_positions) == 1, f"{len(result.done_positions)} [DONE] events, expected 1",
               exchange)
    ctx.expect(result.done_positions[0] == len(events) - 1,
               f"[DONE] is event {result.done_positions[0]} of {len(events)}: data follows it", exchange)
    tail = exchange.content[events[-1].end:]
    leftover = [line for line in tail.splitlines() if line.strip() and not line.startswith(b":")]
    ctx.expect(not leftover, f"bytes after [DONE]: {tail[:200]!r}", exchange)
    ctx.expect(result.parsed.trailing_incomplete is None, "an unterminated event follows [DONE]", exchange)


@check("streaming.utf8_split", "streaming", "framing")
def utf8_split(ctx: Context) -> None:
    """No UTF-8 character is split across events, and streaming adds no U+FFFD the whole text lacks."""
    body = ctx.body(messages=[{"role": "user", "content": UNICODE_PROMPT}], max_tokens=64, seed=ctx.target.seed)
    result = ctx.ok_stream(body)
    split = split_utf8_events(result.parsed.events)
    ctx.expect(not split, f"events {split[:5]} carry part of a UTF-8 character", result.exchange)
    streamed = "".join(result.texts().values())
    if "\ufffd" in streamed:
        ctx.uses("seed")
        _, whole = ctx.ok_json(body)
        text = "".join(c["message"]["content"] or "" for c in whole["choices"])
        ctx.expect("\ufffd" in text, "the stream's text has U+FFFD where the same seeded non-stream text has "
                   "none: a character was cut between chunks", result.exchange)

