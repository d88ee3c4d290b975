"""n: several choices per request, with indices 0..n-1, streamed and not."""

from __future__ import annotations

from conformance.context import Context
from conformance.registry import check


@check("n.choices_indices", "n", "choices")
def n_choices_indices(ctx: Context) -> None:
    """n=3 gives 3 choices with indices exactly {0, 1, 2}, streamed and not."""
    exchange, data = ctx.ok_json(ctx.body(n=3, max_tokens=4))
    indices = [choice.get("index") for choice in data["choices"]]
    ctx.expect(sorted(indices) == [0, 1, 2], f"n=3: choice indices {indices}, expected 0, 1, 2", exchange)
    result = ctx.ok_stream(ctx.body(n=3, max_tokens=4))
    seen = sorted({choice.get("index") for chunk in result.chunks for choice in chunk.get("choices") or []})
    ctx.expect(seen == [0, 1, 2], f"n=3 streamed: choice indices {seen}, expected 0, 1, 2", result.exchange)
    finished = sorted(result.finish_reasons())
    ctx.expect(finished == [0, 1, 2], f"n=3 streamed: finish_reason seen for choices {finished}, expected 0, 1, 2",
               result.exchange)
