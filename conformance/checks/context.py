"""Context: prompt + max_tokens beyond the context is truncated by default, a 400 when asked."""

from __future__ import annotations

from typing import Any

from conformance.checks import _shared as shared
from conformance.context import Context
from conformance.registry import check

HUGE_MAX_TOKENS = 10_000_000
_CONTEXT_PROMPT = "Summarize the following notes in one word. " + " ".join(
    f"Note {i}: the cat sat on the mat and watched the birds outside." for i in range(12))
# Stops that end the answer at once, so a lowered max_tokens never means a long generation.
_QUICK_STOPS = [" ", "\n", ".", ","]


def _context_body(ctx: Context, **params: Any) -> dict[str, Any]:
    return ctx.body(messages=shared.user(_CONTEXT_PROMPT), max_tokens=HUGE_MAX_TOKENS, stop=_QUICK_STOPS, **params)


@check("context.truncate_default", "context", "context")
def context_truncate_default(ctx: Context) -> None:
    """prompt + max_tokens beyond any context: max_tokens is lowered by default (200, not an error)."""
    ctx.ok_json(_context_body(ctx))


@check("context.error_behavior", "context", "context")
def context_error_behavior(ctx: Context) -> None:
    """prompt + max_tokens beyond the context with context_length_exceeded_behavior "error": a 400."""
    exchange = ctx.chat(_context_body(ctx, context_length_exceeded_behavior="error"))
    ctx.expect_error(exchange, [400], param=("max_tokens", "messages"), what='context_length_exceeded_behavior "error"')
