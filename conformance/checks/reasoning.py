"""Reasoning models' output in a stream (openai profile): reasoning belongs in its own delta field
(`reasoning_content`, or vLLM's newer `reasoning`), which every other check ignores; reasoning sent
inside the content under a `<think>` tag reaches clients as answer text."""

from __future__ import annotations

import re

from conformance.context import Context
from conformance.registry import Skipped, check

THINK_TAG = re.compile(r"</?think>", re.IGNORECASE)


@check("streaming.reasoning_apart", "streaming", "semantic", severity="should")
def reasoning_apart(ctx: Context) -> None:
    """openai profile: a stream's content carries no `<think>` tag: a reasoning model's reasoning goes
    out as delta.reasoning_content (or delta.reasoning), apart from the answer."""
    if ctx.target.profile != "openai":
        raise Skipped("where reasoning goes is checked in the openai profile (--profile openai)")
    result = ctx.ok_stream(ctx.body(max_tokens=32, seed=ctx.target.seed))
    text = result.texts().get(0, "")
    found = THINK_TAG.search(text)
    ctx.expect(found is None, f"the streamed content holds {found.group(0) if found else ''!r} at character "
               f"{found.start() if found else 0}: reasoning sent as answer text; send it as "
               "delta.reasoning_content (or delta.reasoning)", result.exchange)
