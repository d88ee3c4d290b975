"""Usage accounting: present, adding up, bounded by max_tokens, placed only in the last chunk,
and equal to the tokens the endpoint itself reports (logprob entries)."""

from __future__ import annotations

from typing import Any

from conformance.context import Context, StreamResult, content_tokens, schema_errors
from conformance.registry import CheckFailed, check
from conformance.target import Exchange

LONG_PROMPT = ("Write a long story about a lighthouse keeper and a storm, in many sentences, "
               "with at least three hundred words.")
SHORT_MAX = 3
ASK_USAGE = {"stream_options": {"include_usage": True}}  # what an OpenAI client sends to get stream usage


def _completion(ctx: Context, body: dict[str, Any]) -> tuple[Exchange, dict[str, Any]]:
    """A non-stream answer that must be 200 with a JSON object (the rest is judged per rule)."""
    exchange = ctx.chat({**body, "stream": False})
    ctx.expect(exchange.status == 200, f"expected 200, got {exchange.status}", exchange)
    try:
        data = exchange.json()
    except ValueError as exc:
        raise CheckFailed(f"body is not JSON: {exc}", exchange) from exc
    ctx.expect(isinstance(data, dict), "body is not a JSON object", exchange)
    return exchange, data


def _usage(ctx: Context, usage: Any, exchange: Exchange, where: str) -> dict[str, int]:
    """`usage` must be a valid Usage object whose parts add up."""
    ctx.expect(usage is not None, f"{where}: no usage", exchange)
    problems = schema_errors("Usage", usage)
    ctx.expect(not problems, f"{where}: usage breaks the spec: " + "; ".join(problems), exchange)
    ctx.expect(usage["prompt_tokens"] + usage["completion_tokens"] == usage["total_tokens"],
               f"{where}: prompt_tokens {usage['prompt_tokens']} + completion_tokens {usage['completion_tokens']}"
               f" != total_tokens {usage['total_tokens']}", exchange)
    return usage


def _chunks(ctx: Context, result: StreamResult) -> list[dict[str, Any]]:
    chunks = [chunk for chunk in result.chunks if isinstance(chunk, dict)]
    ctx.expect(chunks, "the stream carried no JSON chunks", result.exchange)
    return chunks


def _stream_usage(ctx: Context, result: StreamResult) -> dict[str, int]:
    """The usage a stream carries, for checks of its numbers. Where it sits, and that it comes
    unasked, is usage.stream_last_chunk_only's to judge (one deviation, one failure): a stream
    without any usage, even asked for with stream_options, makes these checks not supported."""
    carriers = [chunk for chunk in _chunks(ctx, result) if chunk.get("usage") is not None]
    if not carriers:
        ctx.lacks("usage in the stream (asked for with stream_options.include_usage)", "usage.stream_last_chunk_only")
    return _usage(ctx, carriers[-1]["usage"], result.exchange, "stream")


@check("usage.nonstream_present", "usage", "semantic")
def nonstream_present(ctx: Context) -> None:
    """A non-stream body carries a valid usage object."""
    exchange, data = _completion(ctx, ctx.body())
    ctx.expect(data.get("usage") is not None, f"the chat.completion body has no usage (keys: {sorted(data)})",
               exchange)
    problems = schema_errors("Usage", data["usage"])
    ctx.expect(not problems, "usage breaks the spec: " + "; ".join(problems), exchange)


@check("usage.totals_add_up", "usage", "semantic")
def totals_add_up(ctx: Context) -> None:
    """prompt_tokens + completion_tokens == total_tokens, streamed and not."""
    exchange, data = _completion(ctx, ctx.body())
    _usage(ctx, data.get("usage"), exchange, "non-stream")
    _stream_usage(ctx, ctx.ok_stream(ctx.body(**ASK_USAGE)))


@check("usage.max_tokens_bound", "usage", "semantic")
def max_tokens_bound(ctx: Context) -> None:
    """completion_tokens never exceeds max_tokens: the default small request, and max_tokens 3
    with a prompt asking for far more (streamed and not)."""
    default = ctx.body()
    exchange, data = _completion(ctx, default)
    usage = _usage(ctx, data.get("usage"), exchange, "non-stream")
    ctx.expect(usage["completion_tokens"] <= default["max_tokens"],
               f"completion_tokens {usage['completion_tokens']} > max_tokens {default['max_tokens']}", exchange)
    body = ctx.body(messages=[{"role": "user", "content": LONG_PROMPT}], max_tokens=SHORT_MAX)
    exchange, data = _completion(ctx, body)
    usage = _usage(ctx, data.get("usage"), exchange, "non-stream")
    ctx.expect(usage["completion_tokens"] <= SHORT_MAX,
               f"completion_tokens {usage['completion_tokens']} > max_tokens {SHORT_MAX}", exchange)
    result = ctx.ok_stream({**body, **ASK_USAGE})
    usage = _stream_usage(ctx, result)
    ctx.expect(usage["completion_tokens"] <= SHORT_MAX,
               f"stream: completion_tokens {usage['completion_tokens']} > max_tokens {SHORT_MAX}", result.exchange)


@check("usage.stream_last_chunk_only", "usage", "semantic")
def stream_last_chunk_only(ctx: Context) -> None:
    """In a stream, usage is non-null exactly once: in the very last JSON chunk, whose choices are []."""
    result = ctx.ok_stream(ctx.body())
    chunks = _chunks(ctx, result)
    carriers = [i for i, chunk in enumerate(chunks) if chunk.get("usage") is not None]
    ctx.expect(carriers, "no chunk of the stream carries usage", result.exchange)
    ctx.expect(len(carriers) == 1, f"{len(carriers)} chunks carry usage (chunks {carriers[:10]}), expected exactly 1",
               result.exchange)
    ctx.expect(carriers[0] == len(chunks) - 1,
               f"usage is in chunk {carriers[0]} of {len(chunks)}, not in the last one", result.exchange)
    ctx.expect(chunks[-1].get("choices") == [],
               f"the usage chunk's choices are {chunks[-1].get('choices')!r:.200}, expected []", result.exchange)


@check("usage.matches_stream_tokens", "usage", "semantic")
def matches_stream_tokens(ctx: Context) -> None:
    """With logprobs, streamed completion_tokens equals the number of logprob entries streamed."""
    ctx.uses("logprobs")
    result = ctx.ok_stream(ctx.body(logprobs=True, max_tokens=12, **ASK_USAGE))
    seen = sum(len(entries) for entries in result.logprob_tokens().values())
    if not seen:
        ctx.lacks_logprobs()
    usage = _stream_usage(ctx, result)
    ctx.expect(seen == content_tokens(usage),  # logprobs cover the answer, not a reasoning model's reasoning
               f"the stream carried {seen} logprob entries, usage says completion_tokens "
               f"{usage['completion_tokens']}{_of_them_reasoning(usage)}", result.exchange)


@check("usage.matches_logprobs_nonstream", "usage", "semantic")
def matches_logprobs_nonstream(ctx: Context) -> None:
    """With logprobs and n=1, completion_tokens equals len(choices[0].logprobs.content)."""
    ctx.uses("logprobs")
    exchange, data = _completion(ctx, ctx.body(logprobs=True, max_tokens=12))
    usage = _usage(ctx, data.get("usage"), exchange, "non-stream")
    choices = data.get("choices")
    ctx.expect(isinstance(choices, list) and len(choices) == 1 and isinstance(choices[0], dict),
               "expected exactly one choice", exchange)
    logprobs = choices[0].get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    count = len(content) if isinstance(content, list) else 0
    if not count:
        ctx.lacks_logprobs()
    ctx.expect(count == content_tokens(usage),
               f"{count} logprob entries (choices[0].logprobs is {'set' if logprobs else repr(logprobs)}), usage says "
               f"completion_tokens {usage['completion_tokens']}{_of_them_reasoning(usage)}", exchange)


def _of_them_reasoning(usage: dict[str, Any]) -> str:
    reasoning = usage["completion_tokens"] - content_tokens(usage)
    return f" ({reasoning} of them reasoning)" if reasoning else ""
