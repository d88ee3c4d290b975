"""max_tokens: a long answer cut at max_tokens ends with finish_reason length."""

from __future__ import annotations

from conformance.checks import _shared as shared
from conformance.context import Context
from conformance.registry import check

LONG_ANSWER = "Write a very long and detailed essay, at least 500 words, about the history of bread."



@check("max_tokens.length_finish", "max_tokens", "limits")
def max_tokens_length_finish(ctx: Context) -> None:
    """max_tokens 2 on a prompt asking for a long answer: finish_reason length, 2 completion tokens."""
    for seed in shared.seeds(ctx):
        body = ctx.body(messages=shared.user(LONG_ANSWER), max_tokens=2, seed=seed, temperature=0.7)
        exchange, data = ctx.ok_json(body)
        finish = shared.choice(data).get("finish_reason")
        used = data["usage"]["completion_tokens"]
        ctx.expect(used <= 2, f"max_tokens 2 but usage.completion_tokens is {used}", exchange)
        if finish == "stop":
            continue  # this seed ended on its own within 2 tokens: try the next one
        ctx.expect(finish == "length", f"finish_reason {finish!r} after max_tokens, expected 'length'", exchange)
        ctx.expect(used == 2, f"finish_reason length at max_tokens 2 but usage.completion_tokens is {used}",
                   exchange)
        return
    ctx.fail(f"in {shared.SEED_TRIES} seeded runs asking for a long essay with max_tokens 2, finish_reason was never "
             "'length'", ctx.last_exchange())
