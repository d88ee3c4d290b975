"""Seed: the same seeded request gives the same text, sent again or streamed."""

from __future__ import annotations

from typing import Any

from conformance.checks import _shared as shared
from conformance.context import Context
from conformance.registry import CheckFailed, check
from conformance.target import Exchange


def _seed_with_text(ctx: Context) -> tuple[int, Exchange, dict[str, Any]]:
    """The first seed whose baseline run produced some text."""
    for seed in shared.seeds(ctx, 3):
        exchange, data = shared.baseline(ctx, seed)
        if shared.text(data):
            return seed, exchange, data
    raise CheckFailed("three seeded runs asking for a story all produced empty text", ctx.last_exchange())


@check("seed.repeat_nonstream", "seed", "determinism")
def seed_repeat_nonstream(ctx: Context) -> None:
    """The same seeded request (temperature 0.7) sent twice returns the same text."""
    seed, _, first = _seed_with_text(ctx)
    exchange, second = ctx.ok_json(shared.story(ctx, seed))
    before, after = shared.text(first), shared.text(second)
    ctx.expect(after == before, f"same request with seed {seed} gave different texts: {before!r} then {after!r}",
               exchange)


@check("seed.repeat_stream_vs_nonstream", "seed", "determinism")
def seed_repeat_stream_vs_nonstream(ctx: Context) -> None:
    """A seeded request streamed returns the same text as the same request not streamed."""
    seed, _, first = _seed_with_text(ctx)
    result = ctx.ok_stream(shared.story(ctx, seed))
    streamed = result.texts().get(0, "")
    ctx.expect(streamed == shared.text(first),
               f"seed {seed}: streamed text {streamed!r} differs from the non-streamed {shared.text(first)!r}",
               result.exchange)
