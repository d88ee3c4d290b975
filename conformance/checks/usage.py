"""Usage accounting: present, adding up, bounded by max_tokens, placed only in the last chunk,
and equal to the tokens the endpoint itself reports (logprob entries)."""

from __future__ import annotations

from typing import Any

from conformance.context import Context, StreamResult
from conformance.registry import check
from conformance.target import Exchange

LONG_PROMPT = "Write a long story about a lighthouse keeper and a storm. Use many sentences."


def _totals(ctx: Context, usage: Any, exchange: Exchange, where: str) -> dict[str, int]:
    ctx.expect(isinstance(usage, dict), f"{where}: usage is {usage!r}", exchange)
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        ctx.expect(isinstance(usage.get(key), int), f"{where}: usage.{key} is {usage.get(key)!r}", exchange)
    ctx.expect(usage["prompt_tokens"] + usage["completion_tokens"] == usage["total_tokens"],
               f"{where}: {usage['prompt_tokens']} + {usage['completion_tokens']} != {usage['total_tokens']}",
               exchange)
    return usage


def _last_usage(ctx: Context, result: StreamResult) -> dict[str, int]:
    carriers = result.usage_chunks()
    ctx.expect(carriers, "no chunk of the stream carries usage", result.exchange)
    return _totals(ctx, result.chunks[carriers[-1]]["usage"], result.exchange, "stream")


@check("usage.nonstream_present", "usage", "semantic")
def nonstream_present(ctx: Context) -> None:
    """A non-stream body carries usage."""
    exchange, data = ctx.ok_json(ctx.body())
    ctx.expect(data.get("usage") is not None, "the chat.completion body has no usage", exchange)


@check("usage.totals_add_up", "usage", "semantic")
def totals_add_up(ctx: Context) -> None:
    """prompt_tokens + completion_tokens == total_tokens, streamed and not."""
    exchange, data = ctx.ok_json(ctx.body())
    _totals(ctx, data.get("usage"), exchange, "non-stream")
    _last_usage(ctx, ctx.ok_stream(ctx.body()))


@check("usage.max_tokens_bound", "usage", "semantic")
def max_tokens_bound(ctx: Context) -> None:
    """completion_tokens never exceeds max_tokens (3, with a prompt asking for much more)."""
    body = ctx.body(messages=[{"role": "user", "content": LONG_PROMPT}], max_tokens=3)
    exchange, data = ctx.ok_json(body)
    usage = _totals(ctx, data.get("usage"), exchange, "non-stream")
    ctx.expect(usage["completion_tokens"] <= 3, f"completion_tokens {usage['completion_tokens']} > max_tokens 3",
               exchange)
    result = ctx.ok_stream(body)
    usage = _last_usage(ctx, result)
    ctx.expect(usage["completion_tokens"] <= 3,
               f"stream: completion_tokens {usage['completion_tokens']} > max_tokens 3", result.exchange)


@check("usage.stream_last_chunk_only", "usage", "semantic")
def stream_last_chunk_only(ctx: Context) -> None:
    """In a stream, usage appears exactly once: in the very last chunk, whose choices are []."""
    result = ctx.ok_stream(ctx.body())
    carriers = result.usage_chunks()
    ctx.expect(len(carriers) == 1, f"{len(carriers)} chunks carry usage (at {carriers}), expected exactly 1",
               result.exchange)
    ctx.expect(carriers[0] == len(result.chunks) - 1,
               f"usage is in chunk {carriers[0]} of {len(result.chunks)}, not the last", result.exchange)
    ctx.expect(result.chunks[-1].get("choices") == [],
               f"the usage chunk's choices are {result.chunks[-1].get('choices')!r}, expected []", result.exchange)


@check("usage.matches_stream_tokens", "usage", "semantic")
def matches_stream_tokens(ctx: Context) -> None:
    """Streamed completion_tokens equals the number of tokens the stream reported (logprob entries)."""
    ctx.uses("logprobs")
    result = ctx.ok_stream(ctx.body(logprobs=True, max_tokens=12))
    usage = _last_usage(ctx, result)
    seen = sum(len(entries) for entries in result.logprob_tokens().values())
    ctx.expect(seen == usage["completion_tokens"],
               f"the stream reported {seen} tokens, usage says {usage['completion_tokens']}", result.exchange)


@check("usage.matches_logprobs_nonstream", "usage", "semantic")
def matches_logprobs_nonstream(ctx: Context) -> None:
    """Non-stream completion_tokens equals the logprob entries of the single choice."""
    ctx.uses("logprobs")
    exchange, data = ctx.ok_json(ctx.body(logprobs=True, max_tokens=12))
    usage = _totals(ctx, data.get("usage"), exchange, "non-stream")
    content = ((data["choices"][0].get("logprobs") or {}).get("content")) or []
    ctx.expect(len(content) == usage["completion_tokens"],
               f"{len(content)} logprob entries, usage says {usage['completion_tokens']} completion tokens", exchange)
