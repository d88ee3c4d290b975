"""Effect checks: every documented sampling parameter must change what is sampled.

The range checks prove a parameter is accepted; these prove it is not then ignored. Each is
judged on the text alone (no logprobs), against the endpoint's own behaviour without the
parameter, so no model's particular words are assumed:

* filters set to their strictest valid value (top_p near 0, min_p 1) keep only the most likely
  token, so several seeds at a high temperature give one text, where without them they spread;
* a near-zero temperature does the same, where a high one spreads;
* a strong penalty changes a seeded near-greedy answer that repeats words.

A check that cannot see the spread it needs (the endpoint's high-temperature samples do not
differ) reports that it cannot judge, instead of passing; when even FIRST_SAMPLES seeds at the
top of the range give one text, the endpoint decodes greedily whatever the temperature:
temperature_effect fails, and the filters' checks are not supported (nothing is sampled for them
to narrow). A penalty's change counts only against a plain answer that came back the same twice in a row
(an endpoint whose first answer to a prompt differs from the later ones proves nothing by a change).
A refused value (400) is not judged here: the ranges checks own acceptance.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NoReturn

from conformance.checks.semantics import NEAR_GREEDY, STORY
from conformance.context import Context, generated_text
from conformance.registry import CheckFailed, Skipped, check

HOT = 1.5  # a temperature inside every profile's range at which samples spread
SAMPLES = 4  # seeds per group
SPREAD = 3  # distinct texts out of SAMPLES that count as spread (a collapsed sampler gives 1, maybe 2)
SAMPLE_TOKENS = 8
FIRST_SAMPLES = 8  # seeds whose first token is compared
FIRST_HOT = 1.9  # the first token spreads most at a temperature near the top of every profile's range
TOP_K = 2  # the smallest top_k the documented range allows (1 < top_k)
SEED_OFFSET = 100  # away from the seeds other checks use, so no memo is shared by accident
# Prompts whose answers repeat words (most models repeat the asked-for opening); the first that
# repeats decides, the next ones are tried while the penalty leaves the answer as it was.
PENALTY_PROMPTS = ("Write five sentences that each begin with 'I like'.",
                   "Write a poem in which every line begins with 'The cat'.", STORY)
PENALTY_TOKENS = 32
STRONG_PENALTY = 1.9  # inside every profile's range (documented ends are exclusive at 2)


def _refused_as_unsupported(ctx: Context, body: dict[str, Any], tested: str | None) -> dict[str, Any]:
    """`ctx.ok_json(body)`; a 400/422 for a request carrying `tested` is not this check's failure."""
    try:
        return ctx.ok_json(body)[1]
    except CheckFailed as exc:
        if tested and exc.exchange is not None and exc.exchange.status in (400, 422):
            ctx.lacks(f"{tested} ({tested}={body.get(tested)!r} is refused with HTTP {exc.exchange.status}, so its "
                      "effect cannot be seen)", f"ranges.{tested}.inside")
        raise


def _text(data: dict[str, Any]) -> str:
    """What was sampled: a reasoning model's reasoning too, as the parameters act on every token."""
    return generated_text(data["choices"][0]["message"])


def _samples(ctx: Context, tested: str | None, **params: Any) -> list[str]:
    """The texts of SAMPLES seeded runs of STORY with `params` (memoized per parameter set)."""
    key = "effects.samples." + repr(sorted(params.items()))

    def run() -> list[str]:
        seeds = [ctx.target.seed + SEED_OFFSET + i for i in range(SAMPLES)]
        return [_text(_refused_as_unsupported(
            ctx, ctx.body(messages=[{"role": "user", "content": STORY}], max_tokens=SAMPLE_TOKENS, seed=seed,
                          **params), tested)) for seed in seeds]

    return ctx.memo(key, run)


def _distinct(texts: list[str]) -> int:
    return len(set(texts))


def _greedy_texts(ctx: Context) -> list[str] | None:
    """The texts of FIRST_SAMPLES seeds at temperature FIRST_HOT when they are all one text (the
    endpoint decodes greedily whatever the temperature), else None. At that temperature a sampling
    endpoint spreads for any real model, so one text means temperature is not applied."""
    def run() -> list[str]:
        seeds = [ctx.target.seed + SEED_OFFSET + i for i in range(FIRST_SAMPLES)]
        return [_text(_refused_as_unsupported(
            ctx, ctx.body(messages=[{"role": "user", "content": STORY}], max_tokens=SAMPLE_TOKENS, seed=seed,
                          temperature=FIRST_HOT), None)) for seed in seeds]

    texts = ctx.memo("effects.greedy_check", run)
    return texts if _distinct(texts) == 1 else None


def _no_spread(ctx: Context, what: str, seen: str) -> NoReturn:
    """The control did not spread: not supported when the endpoint never samples (temperature_effect
    fails for that), else cannot judge."""
    if (greedy := _greedy_texts(ctx)) is not None:
        ctx.lacks(f"sampling at a high temperature ({FIRST_SAMPLES} seeds at temperature {FIRST_HOT} gave one text, "
                  f"{greedy[0]!r}: the endpoint decodes greedily)", "sampling.temperature_effect")
    raise Skipped(f"cannot judge {what}: {seen}")


def _hot_spread(ctx: Context, what: str) -> list[str]:
    """The control: texts at temperature HOT with no filter, which must spread for `what` to be seen."""
    texts = _samples(ctx, None, temperature=HOT)
    if _distinct(texts) < SPREAD:
        _no_spread(ctx, what, f"{SAMPLES} seeds at temperature {HOT} gave only {_distinct(texts)} distinct text(s), "
                              f"too little spread to see a filter narrow it: {texts}")
    return texts


def _collapse_check(param: str, value: float, rule: str) -> Callable[[Context], None]:
    def run(ctx: Context) -> None:
        hot = _hot_spread(ctx, f"{param} {value}")
        texts = _samples(ctx, param, temperature=HOT, **{param: value})
        # Kept to the most likely token, the seeds agree; a near tie broken differently by a
        # non-deterministic endpoint may split them once, never into SPREAD different texts.
        ctx.expect(_distinct(texts) < SPREAD,
                   f"{param} {value} at temperature {HOT} {rule}, but {SAMPLES} seeds gave {_distinct(texts)} "
                   f"different texts ({texts}), as spread as without it ({_distinct(hot)} distinct): "
                   f"{param} is ignored")

    run.__doc__ = f"{param} {value} at temperature {HOT} {rule}: {SAMPLES} seeds give (nearly) one text."
    return run


check("sampling.top_p_effect", "sampling", "effect")(
    _collapse_check("top_p", 0.01, "keeps only the most likely token"))
check("sampling.min_p_effect", "sampling", "effect")(
    _collapse_check("min_p", 1.0, "keeps only the most likely token"))


@check("sampling.temperature_effect", "sampling", "effect")
def temperature_effect(ctx: Context) -> None:
    """A near-zero temperature picks the most likely token: SAMPLES seeds give (nearly) one text,
    where at a high temperature they spread."""
    hot = _samples(ctx, None, temperature=HOT)
    if _distinct(hot) < SPREAD and (greedy := _greedy_texts(ctx)) is not None:
        ctx.fail(f"temperature {FIRST_HOT} must spread the sampled texts, but {FIRST_SAMPLES} seeds all gave "
                 f"{greedy[0]!r} (and {SAMPLES} seeds at temperature {HOT} gave {_distinct(hot)} distinct): the "
                 "endpoint decodes greedily, temperature is ignored", ctx.last_exchange())
    hot = _hot_spread(ctx, "temperature")
    texts = _samples(ctx, "temperature", temperature=NEAR_GREEDY)
    ctx.expect(_distinct(texts) < SPREAD,
               f"temperature {NEAR_GREEDY} must pick the most likely token, but {SAMPLES} seeds gave "
               f"{_distinct(texts)} different texts ({texts}), as spread as at temperature {HOT} "
               f"({_distinct(hot)} distinct): temperature is ignored")




def _first_tokens(ctx: Context, tested: str | None, **params: Any) -> list[str]:
    """The one-token answers of FIRST_SAMPLES seeded runs of STORY (memoized per parameter set)."""
    key = "effects.first." + repr(sorted(params.items()))

    def run() -> list[str]:
        seeds = [ctx.target.seed + SEED_OFFSET + i for i in range(FIRST_SAMPLES)]
        return [_text(_refused_as_unsupported(
            ctx, ctx.body(messages=[{"role": "user", "content": STORY}], max_tokens=1, seed=seed,
                          temperature=FIRST_HOT, **params), tested)) for seed in seeds]

    return ctx.memo(key, run)


@check("sampling.top_k_effect", "sampling", "effect")
def top_k_effect(ctx: Context) -> None:
    """top_k 2 at a high temperature: the first token of FIRST_SAMPLES seeded answers is one of at
    most 2 tokens (so at most 2 texts), where without top_k it takes more."""
    free = _first_tokens(ctx, None)
    if _distinct(free) <= TOP_K:
        _no_spread(ctx, "top_k", f"{FIRST_SAMPLES} seeds at temperature {FIRST_HOT} began with only "
                                 f"{_distinct(free)} distinct token(s) ({sorted(set(free))}), no more than top_k "
                                 f"{TOP_K} allows")
    kept = _first_tokens(ctx, "top_k", top_k=TOP_K)
    ctx.expect(_distinct(kept) <= TOP_K,
               f"top_k {TOP_K} at temperature {FIRST_HOT}: {FIRST_SAMPLES} seeds began with {_distinct(kept)} "
               f"different tokens {sorted(set(kept))}, but only the {TOP_K} most likely may be sampled "
               f"(without top_k: {_distinct(free)} distinct): top_k is ignored")


# ---- penalties -----------------------------------------------------------------------------------

_WORDS = re.compile(r"\w+")


def _repeats(text: str) -> bool:
    """Whether some word occurs twice: a penalty on repeated tokens then has something to act on."""
    words = [word.lower() for word in _WORDS.findall(text)]
    return len(words) != len(set(words))


def _near_greedy(ctx: Context, prompt: str, tested: str | None, ask: int = 0, **params: Any) -> str:
    """The seeded near-greedy answer to `prompt` with `params`; `ask` numbers repeats of the same
    request (each its own memo)."""
    body = ctx.body(messages=[{"role": "user", "content": prompt}], max_tokens=PENALTY_TOKENS,
                    temperature=NEAR_GREEDY, seed=ctx.target.seed + SEED_OFFSET, **params)
    key = "effects.greedy." + repr((prompt, sorted(params.items()), ask))
    return ctx.memo(key, lambda: _text(_refused_as_unsupported(ctx, body, tested)))


STEADY_ASKS = 3  # the plain request is asked up to this often for two answers in a row that agree


def _steady_plain(ctx: Context, prompt: str) -> str | None:
    """The plain near-greedy answer once two asks in a row agree, or None when they never do. An
    endpoint may answer a prompt's first request differently from the later ones (llama-cpp-python,
    before its prompt cache holds the prompt): compared with that answer, an ignored penalty would
    seem to change the text."""
    last = _near_greedy(ctx, prompt, None)
    for ask in range(1, STEADY_ASKS):
        answer = _near_greedy(ctx, prompt, None, ask)
        if answer == last:
            return answer
        last = answer
    return None


def _penalty_check(param: str) -> Callable[[Context], None]:
    def run(ctx: Context) -> None:
        judged, unsteady = [], []
        for prompt in PENALTY_PROMPTS:
            if not _repeats(_near_greedy(ctx, prompt, None)):
                continue  # nothing repeats: no penalty would change this answer
            plain = _steady_plain(ctx, prompt)
            if plain is None:
                unsteady.append(prompt)  # no reference a change could be measured against
                continue
            if _near_greedy(ctx, prompt, param, **{param: STRONG_PENALTY}) != plain:
                return
            judged.append(plain)  # this answer may simply not hinge on a repeat: try the next prompt
        if judged:
            ctx.fail(f"{param} {STRONG_PENALTY} left every seeded near-greedy answer that repeats words unchanged "
                     f"({judged}): {param} is ignored", ctx.last_exchange())
        if unsteady:
            raise Skipped(f"cannot judge {param}: the near-greedy answer to {unsteady} never came back the same "
                          f"twice in a row in {STEADY_ASKS} identical requests, so there is no answer to compare with")
        raise Skipped(f"cannot judge {param}: no near-greedy answer repeated a word, so no penalty had "
                      "anything to act on")

    run.__doc__ = (f"{param} {STRONG_PENALTY} changes a seeded near-greedy answer that repeats words "
                   "(against the same request without it).")
    return run


for _param in ("frequency_penalty", "presence_penalty", "repetition_penalty"):
    check(f"sampling.{_param}_effect", "sampling", "effect")(_penalty_check(_param))
