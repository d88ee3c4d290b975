"""Strict SSE checks of streamed responses, parsed with our own WHATWG parser.

Each check looks at one rule, so a report names exactly what a server got wrong. Streams are
shared through `ctx.memo`: the same two requests (n=1 and n=2) serve most checks here.
"""

from __future__ import annotations

from typing import Any

from conformance.context import Context, StreamResult, schema_errors
from conformance.registry import check
from spec.sse import split_utf8_events

UNICODE_PROMPT = ("Write a few words in French, German and Japanese with accents and an emoji, "
                  "like café, über, 日本, 🙂.")
EMOJI_PROMPT = "Reply with only these emoji: 🙂🐱🎉"
MULTI_N = 2


def _stream_n1(ctx: Context) -> StreamResult:
    return ctx.memo("streaming.n1", lambda: ctx.ok_stream(ctx.body(max_tokens=8, seed=ctx.target.seed)))


def _stream_multi(ctx: Context) -> tuple[StreamResult, int]:
    """The n=2 stream, or the n=1 one when the target declared `n` unsupported. A stream that
    ignores n (one choice) is n.choices_indices' failure; the checks here then judge what they can
    or say not supported (one deviation, one failure)."""
    if "n" in ctx.target.skip_features:
        return _stream_n1(ctx), 1
    body = ctx.body(n=MULTI_N, max_tokens=8, seed=ctx.target.seed)
    return ctx.memo("streaming.n2", lambda: ctx.ok_stream(body)), MULTI_N


def _objects(ctx: Context, result: StreamResult) -> list[dict[str, Any]]:
    """The JSON chunks, which must all be objects for the rule at hand to be judged."""
    ctx.expect(not result.undecodable, f"event data is neither JSON nor [DONE]: {result.undecodable[:2]}",
               result.exchange)
    for index, chunk in enumerate(result.chunks):
        ctx.expect(isinstance(chunk, dict), f"JSON chunk {index} is not an object: {chunk!r:.200}",
                   result.exchange)
    ctx.expect(result.chunks, "the stream carried no JSON chunks", result.exchange)
    return result.chunks


def _choices(chunk: dict[str, Any]) -> list[dict[str, Any]]:
    choices = chunk.get("choices")
    return [c for c in choices if isinstance(c, dict)] if isinstance(choices, list) else []


@check("streaming.content_type", "streaming", "framing")
def content_type(ctx: Context) -> None:
    """A streamed answer is 200 text/event-stream."""
    result = _stream_n1(ctx)  # ok_stream enforces the status and the media type
    ctx.expect(result.exchange.content_type == "text/event-stream",
               f"expected text/event-stream, got {result.exchange.content_type!r}", result.exchange)


@check("streaming.framing", "streaming", "framing")
def framing(ctx: Context) -> None:
    """The stream parses cleanly: no parser warnings, valid UTF-8, no unterminated event, and every
    event is a `message` whose data is exactly one JSON object or `[DONE]`."""
    result = _stream_n1(ctx)
    parsed, exchange = result.parsed, result.exchange
    ctx.expect(parsed.trailing_incomplete is None,
               f"the stream ends inside an event (no blank line after it): {parsed.trailing_incomplete!r:.200}",
               exchange)
    ctx.expect(not parsed.invalid_utf8, "invalid UTF-8 in the stream: " + "; ".join(parsed.invalid_utf8[:3]),
               exchange)
    ctx.expect(not parsed.warnings, "SSE parser warnings: " + "; ".join(parsed.warnings[:3]), exchange)
    ctx.expect(parsed.events, "the stream carried no events", exchange)
    for index, event in enumerate(parsed.events):
        ctx.expect(event.event == "message", f"event {index} has type {event.event!r}, not message", exchange)
    _objects(ctx, result)


@check("streaming.chunk_schema", "streaming", "schema")
def chunk_schema(ctx: Context) -> None:
    """Every JSON event is a `chat.completion.chunk` as the spec describes it."""
    for result in (_stream_n1(ctx), _stream_multi(ctx)[0]):
        for index, chunk in enumerate(_objects(ctx, result)):
            problems = schema_errors("ChatCompletionChunk", chunk)
            ctx.expect(not problems, f"chunk {index} breaks the spec: " + "; ".join(problems), result.exchange)


@check("streaming.constant_fields", "streaming", "semantic")
def constant_fields(ctx: Context) -> None:
    """id, created and model are the same in every chunk; object is chat.completion.chunk."""
    result, _ = _stream_multi(ctx)
    chunks = _objects(ctx, result)
    first = chunks[0]
    for index, chunk in enumerate(chunks):
        ctx.expect(chunk.get("object") == "chat.completion.chunk",
                   f"chunk {index} has object {chunk.get('object')!r}, expected 'chat.completion.chunk'",
                   result.exchange)
        for key in ("id", "created", "model"):
            ctx.expect(key in chunk and chunk.get(key) == first.get(key),
                       f"chunk {index} has {key} {chunk.get(key)!r}, chunk 0 had {first.get(key)!r}",
                       result.exchange)


@check("streaming.role_first", "streaming", "semantic")
def role_first(ctx: Context) -> None:
    """Each choice's first delta carries role assistant (of the choices the n=2 stream carries:
    whether it carries both is n.choices_indices's rule)."""
    result, n = _stream_multi(ctx)
    seen: set[Any] = set()
    for number, chunk in enumerate(_objects(ctx, result)):
        for choice in _choices(chunk):
            index = choice.get("index")
            if index in seen:
                continue
            seen.add(index)
            delta = choice.get("delta")
            role = delta.get("role") if isinstance(delta, dict) else None
            ctx.expect(role == "assistant",
                       f"choice {index}'s first delta (chunk {number}) has role {role!r}, expected 'assistant'",
                       result.exchange)
    ctx.expect(seen, "no chunk of the stream carries a choice", result.exchange)


@check("streaming.finish_reason_once", "streaming", "semantic")
def finish_reason_once(ctx: Context) -> None:
    """With n=2, each choice index 0..n-1 gets exactly one non-null finish_reason, under its own index."""
    result, n = _stream_multi(ctx)
    indices = {choice.get("index") for chunk in _objects(ctx, result) for choice in _choices(chunk)}
    reasons: dict[Any, list[Any]] = {}
    for chunk in _objects(ctx, result):
        for choice in _choices(chunk):
            if choice.get("finish_reason") is not None:
                reasons.setdefault(choice.get("index"), []).append(choice["finish_reason"])
    if n > 1 and len(indices) == 1 and sum(map(len, reasons.values())) <= 1:
        # One choice, finished once: n was not honoured in the stream, the rule here cannot apply.
        ctx.lacks(f"n in streams (the n={n} stream carried one choice, index {next(iter(indices))!r})",
                  "n.choices_indices")
    for index, found in reasons.items():
        ctx.expect(len(found) == 1, f"choice {index} got {len(found)} finish_reasons: {found}", result.exchange)
    got = sorted(reasons, key=lambda k: (0, k) if isinstance(k, int) else (1, repr(k)))
    ctx.expect(got == list(range(n)),
               f"finish_reasons came for choice indices {got}, expected {list(range(n))} (n={n})", result.exchange)


@check("streaming.done_once_last", "streaming", "framing")
def done_once_last(ctx: Context) -> None:
    """Exactly one `data: [DONE]`, the last event, with only blank lines or comments after it."""
    result = _stream_n1(ctx)
    events, exchange, done = result.parsed.events, result.exchange, result.done_positions
    ctx.expect(done, "the stream has no data: [DONE]", exchange)
    ctx.expect(len(done) == 1, f"{len(done)} data: [DONE] events (at events {done}), expected exactly 1",
               exchange)
    ctx.expect(done[0] == len(events) - 1,
               f"data: [DONE] is event {done[0]} of {len(events)}: {len(events) - 1 - done[0]} event(s) follow it",
               exchange)
    tail = exchange.content[events[-1].end:]
    leftover = [line for line in tail.splitlines() if line.strip() and not line.startswith(b":")]
    ctx.expect(not leftover, f"bytes other than blank lines or comments follow data: [DONE]: {tail[:200]!r}",
               exchange)


@check("streaming.utf8_split", "streaming", "framing")
def utf8_split(ctx: Context) -> None:
    """No UTF-8 character is split across events: each event's data is valid UTF-8 on its own."""
    body = ctx.body(messages=[{"role": "user", "content": UNICODE_PROMPT}], max_tokens=64,
                    seed=ctx.target.seed)
    result = ctx.ok_stream(body)
    split = split_utf8_events(result.parsed.events)
    ctx.expect(not split, f"the data of event(s) {split[:5]} is not valid UTF-8 on its own: a character was "
               "split across events", result.exchange)


@check("streaming.no_replacement_char", "streaming", "framing")
def no_replacement_char(ctx: Context) -> None:
    """A character made of several tokens (an emoji is several byte tokens in most vocabularies) is
    streamed whole: the streamed text has no U+FFFD where the same seeded non-stream text has a
    character."""
    ctx.uses("seed")
    for prompt in (EMOJI_PROMPT, UNICODE_PROMPT):
        body = ctx.body(messages=[{"role": "user", "content": prompt}], max_tokens=16, seed=ctx.target.seed)
        result = ctx.ok_stream(body)
        streamed = result.texts().get(0, "")
        if "\ufffd" not in streamed:
            continue
        _, whole = ctx.ok_json(body)
        text = whole["choices"][0]["message"]["content"] or ""
        cut = streamed.index("\ufffd")
        # Judged only where the seeded texts agree up to the replacement character: otherwise the
        # seed does not repeat across modes closely enough to tell a cut character from another text.
        if text[:cut] == streamed[:cut] and len(text) > cut and text[cut] != "\ufffd":
            ctx.fail(f"the streamed text has U+FFFD at character {cut} where the same seeded non-stream text has "
                     f"{text[cut:cut + 1]!r}: a character made of several tokens was sent in pieces, each "
                     "replaced", result.exchange)


@check("streaming.line_endings", "streaming", "framing", severity="should")
def line_endings(ctx: Context) -> None:
    """The stream's lines all end the same way (LF, CRLF or CR), and it carries events. A should:
    the SSE format allows mixing them, but a careless client may not."""
    result = _stream_n1(ctx)
    kinds = sorted(result.parsed.line_endings)
    ctx.expect(result.parsed.events, "the parser found no events in the stream", result.exchange)
    ctx.expect(len(kinds) == 1, f"the stream mixes line endings: {', '.join(kinds) or 'none'}", result.exchange)
