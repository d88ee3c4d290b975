"""Stop sequences: a seeded run rerun with a stop string from its own text ends with that string
(kept, as the doc says) and otherwise equals the first run."""

from __future__ import annotations

import re

from conformance.checks import _shared as shared
from conformance.context import Context
from conformance.registry import CheckFailed, check
from conformance.target import Exchange

_WORD = re.compile(r"\w+")
_SKIP_CHARS = 3  # a stop string starts after the first few characters


def pick_stop(text: str) -> str | None:
    """A substring occurring exactly once in `text`, starting after its first few characters.

    Prefers a whole word (the first unique one of 3+ characters, then of 2); else the first
    unique 3-, then 2-character slice. Deterministic; None when the text is too short.
    """
    words = [m for m in _WORD.finditer(text) if m.start() >= _SKIP_CHARS]
    for size in (3, 2):
        for match in words:
            word = match.group()
            if len(word) >= size and text.count(word) == 1:
                return word
    for size in (3, 2):
        for start in range(_SKIP_CHARS, len(text) - size + 1):
            piece = text[start : start + size]
            if piece.strip() and text.count(piece) == 1:
                return piece
    return None


def _stop_plan(ctx: Context) -> tuple[int, str, str]:
    """(seed, baseline text, stop string) from the first seeded run long enough to pick one."""
    for seed in shared.seeds(ctx):
        _, data = shared.baseline(ctx, seed)
        text = shared.text(data)
        stop = pick_stop(text)
        if stop is not None:
            return seed, text, stop
    raise CheckFailed(f"{shared.SEED_TRIES} seeded story runs gave no text with a unique substring to stop on",
                      ctx.last_exchange())


def _needs_repeatable_seed(ctx: Context, seed: int, baseline: str, stream: bool) -> None:
    """The stop checks compare a rerun with its seeded baseline: when the baseline itself does not
    repeat (without stop), the seed is what failed (seed.* judge that), not the stop rule."""
    if stream:
        again = ctx.ok_stream(shared.story(ctx, seed)).texts().get(0, "")
    else:
        again = shared.text(ctx.ok_json(shared.story(ctx, seed))[1])
    if again != baseline:
        mode = "streamed" if stream else "sent again"
        judged_by = "seed.repeat_stream_vs_nonstream" if stream else "seed.repeat_nonstream"
        ctx.lacks(f"seed (seed {seed} gave {baseline!r}, then {again!r} {mode})", judged_by)


def _check_stopped(ctx: Context, exchange: Exchange, text: str, finish: str | None, baseline: str,
                   stop: str, seed: int, stream: bool) -> None:
    expected = baseline[: baseline.index(stop) + len(stop)]
    if text != expected or finish != "stop":
        _needs_repeatable_seed(ctx, seed, baseline, stream)
    where = f"seed {seed}, stop {stop!r} (baseline text {baseline!r})"
    ctx.expect(finish == "stop", f"{where}: finish_reason {finish!r}, expected 'stop'", exchange)
    ctx.expect(text.endswith(stop),
               f"{where}: the text must contain and end with the stop sequence, got {text!r}", exchange)
    ctx.expect(text == expected,
               f"{where}: the text must equal the baseline up to and including the stop sequence, "
               f"expected {expected!r}, got {text!r}", exchange)


@check("stop.contains_and_ends", "stop", "stop")
def stop_contains_and_ends(ctx: Context) -> None:
    """A seeded run rerun with a stop string from its own text ends with that string (kept, as the
    doc says) and equals the first run up to and including it; finish_reason is stop."""
    seed, baseline, stop = _stop_plan(ctx)
    exchange, data = ctx.ok_json(shared.story(ctx, seed, stop=stop))
    finish = shared.choice(data).get("finish_reason")
    _check_stopped(ctx, exchange, shared.text(data), finish, baseline, stop, seed, False)


@check("stop.stream", "stop", "stop")
def stop_stream(ctx: Context) -> None:
    """The stop rule in streaming mode: the streamed text ends with the stop string, finish stop."""
    seed, baseline, stop = _stop_plan(ctx)
    result = ctx.ok_stream(shared.story(ctx, seed, stop=stop))
    reasons = result.finish_reasons().get(0, [])
    _check_stopped(ctx, result.exchange, result.texts().get(0, ""), reasons[-1] if reasons else None,
                   baseline, stop, seed, True)
