"""Effect checks: every documented sampling parameter must change what is sampled.

One check per request parameter with an `x-effect` in the spec, probed at the value just inside
the end of its documented range that `x-effect` names (top_p near 0, min_p 1, top_k its smallest
valid k, a penalty just under its top): no value is written here.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import spec
from conformance.checks._shared import STORY, near_greedy
from conformance.context import Context, generated_text
from conformance.registry import Check, CheckFailed, Skipped, register

SAMPLES = 4  # seeds per group
SPREAD = 3  # distinct texts out of SAMPLES that count as spread (a collapsed sampler gives 1, maybe 2)
SAMPLE_TOKENS = 8
FIRST_SAMPLES = 8  # seeds whose first token is compared
HOT_FRACTION = 0.75  # samples spread at a temperature this far up its documented range
FIRST_HOT_MARGIN = 0.1  # the first token spreads most this close under the top of temperature's range
SEED_OFFSET = 100  # away from the seeds other checks use, so no memo is shared by accident
# Prompts whose answers repeat words (most models repeat the asked-for opening); the first that
# repeats decides, the next ones are tried while the penalty leaves the answer as it was.
PENALTY_PROMPTS = ("Write five sentences that each begin with 'I like'.",
                   "Write a poem in which every line begins with 'The cat'.", STORY)
PENALTY_TOKENS = 32


@dataclass(frozen=True)
class Temperatures:
    """The temperatures the effect checks sample at, from the documented range of the parameter
    whose x-effect probe is greedy (temperature)."""

    check_id: str  # the check that judges whether temperature is applied
    near_greedy: float  # picks the most likely token
    hot: float  # samples spread
    first_hot: float  # the first token spreads most


def temperatures(api: spec.ApiSpec) -> Temperatures:
    param = next(item for item in api.parameters if item.effect and item.effect.probe == "greedy")
    rng = api.parameter_ranges("documented")[param.name]
    other_end = "max" if param.effect.end == "min" else "min"
    return Temperatures(check_id=_check_id(param), near_greedy=near_greedy(api),
                        hot=rng.at_fraction(HOT_FRACTION), first_hot=rng.near(other_end, FIRST_HOT_MARGIN))


def _check_id(param: spec.RequestParameter) -> str:
    return f"{param.feature}.{param.name}_effect"


def probe_value(api: spec.ApiSpec, param: spec.RequestParameter) -> int | float:
    """The value a parameter's effect is probed at: just inside the end its `x-effect` names."""
    assert param.effect is not None
    return api.parameter_ranges("documented")[param.name].near(param.effect.end, param.effect.margin)


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


def _greedy_texts(ctx: Context, temps: Temperatures) -> list[str] | None:
    """The texts of FIRST_SAMPLES seeds at temperature first_hot when they are all one text (the
    endpoint decodes greedily whatever the temperature), else None. At that temperature a sampling
    endpoint spreads for any real model, so one text means temperature is not applied."""
    def run() -> list[str]:
        seeds = [ctx.target.seed + SEED_OFFSET + i for i in range(FIRST_SAMPLES)]
        return [_text(_refused_as_unsupported(
            ctx, ctx.body(messages=[{"role": "user", "content": STORY}], max_tokens=SAMPLE_TOKENS, seed=seed,
                          temperature=temps.first_hot), None)) for seed in seeds]

    texts = ctx.memo("effects.greedy_check", run)
    return texts if _distinct(texts) == 1 else None


def _no_spread(ctx: Context, temps: Temperatures, what: str, seen: str) -> NoReturn:
    """The control did not spread: not supported when the endpoint never samples (temperature_effect
    fails for that), else cannot judge."""
    if (greedy := _greedy_texts(ctx, temps)) is not None:
        ctx.lacks(f"sampling at a high temperature ({FIRST_SAMPLES} seeds at temperature {temps.first_hot} gave one "
                  f"text, {greedy[0]!r}: the endpoint decodes greedily)", temps.check_id)
    raise Skipped(f"cannot judge {what}: {seen}")


def _hot_spread(ctx: Context, temps: Temperatures, what: str) -> list[str]:
    """The control: texts at temperature hot with no filter, which must spread for `what` to be seen."""
    texts = _samples(ctx, None, temperature=temps.hot)
    if _distinct(texts) < SPREAD:
        _no_spread(ctx, temps, what, f"{SAMPLES} seeds at temperature {temps.hot} gave only {_distinct(texts)} "
                                     f"distinct text(s), too little spread to see a filter narrow it: {texts}")
    return texts


def _collapse_check(param: str, value: float, temps: Temperatures) -> Callable[[Context], None]:
    rule = "keeps only the most likely token"

    def run(ctx: Context) -> None:
        hot = _hot_spread(ctx, temps, f"{param} {value}")
        texts = _samples(ctx, param, temperature=temps.hot, **{param: value})
        # Kept to the most likely token, the seeds agree; a near tie broken differently by a
        # non-deterministic endpoint may split them once, never into SPREAD different texts.
        ctx.expect(_distinct(texts) < SPREAD,
                   f"{param} {value} at temperature {temps.hot} {rule}, but {SAMPLES} seeds gave "
                   f"{_distinct(texts)} different texts ({texts}), as spread as without it ({_distinct(hot)} "
                   f"distinct): {param} is ignored")

    run.__doc__ = f"{param} {value} at temperature {temps.hot} {rule}: {SAMPLES} seeds give (nearly) one text."
    return run


def _greedy_check(param: str, value: float, temps: Temperatures) -> Callable[[Context], None]:
    def run(ctx: Context) -> None:
        hot = _samples(ctx, None, temperature=temps.hot)
        if _distinct(hot) < SPREAD and (greedy := _greedy_texts(ctx, temps)) is not None:
            ctx.fail(f"{param} {temps.first_hot} must spread the sampled texts, but {FIRST_SAMPLES} seeds all gave "
                     f"{greedy[0]!r} (and {SAMPLES} seeds at {param} {temps.hot} gave {_distinct(hot)} distinct): "
                     f"the endpoint decodes greedily, {param} is ignored", ctx.last_exchange())
        hot = _hot_spread(ctx, temps, param)
        texts = _samples(ctx, param, **{param: value})
        ctx.expect(_distinct(texts) < SPREAD,
                   f"{param} {value} must pick the most likely token, but {SAMPLES} seeds gave "
                   f"{_distinct(texts)} different texts ({texts}), as spread as at {param} {temps.hot} "
                   f"({_distinct(hot)} distinct): {param} is ignored")

    run.__doc__ = (f"A near-zero {param} ({value}) picks the most likely token: {SAMPLES} seeds give (nearly) one "
                   "text, where at a high temperature they spread.")
    return run


def _first_tokens(ctx: Context, temps: Temperatures, tested: str | None, **params: Any) -> list[str]:
    """The one-token answers of FIRST_SAMPLES seeded runs of STORY (memoized per parameter set)."""
    key = "effects.first." + repr(sorted(params.items()))

    def run() -> list[str]:
        seeds = [ctx.target.seed + SEED_OFFSET + i for i in range(FIRST_SAMPLES)]
        return [_text(_refused_as_unsupported(
            ctx, ctx.body(messages=[{"role": "user", "content": STORY}], max_tokens=1, seed=seed,
                          temperature=temps.first_hot, **params), tested)) for seed in seeds]

    return ctx.memo(key, run)


def _keep_k_check(param: str, k: int, temps: Temperatures) -> Callable[[Context], None]:
    def run(ctx: Context) -> None:
        free = _first_tokens(ctx, temps, None)
        if _distinct(free) <= k:
            _no_spread(ctx, temps, param, f"{FIRST_SAMPLES} seeds at temperature {temps.first_hot} began with only "
                                          f"{_distinct(free)} distinct token(s) ({sorted(set(free))}), no more than "
                                          f"{param} {k} allows")
        kept = _first_tokens(ctx, temps, param, **{param: k})
        ctx.expect(_distinct(kept) <= k,
                   f"{param} {k} at temperature {temps.first_hot}: {FIRST_SAMPLES} seeds began with "
                   f"{_distinct(kept)} different tokens {sorted(set(kept))}, but only the {k} most likely may be "
                   f"sampled (without {param}: {_distinct(free)} distinct): {param} is ignored")

    run.__doc__ = (f"{param} {k} at a high temperature: the first token of {FIRST_SAMPLES} seeded answers is one of "
                   f"at most {k} tokens (so at most {k} texts), where without {param} it takes more.")
    return run


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
                    temperature=near_greedy(ctx.target.api), seed=ctx.target.seed + SEED_OFFSET, **params)
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


def _penalty_check(param: str, strong: float, temps: Temperatures) -> Callable[[Context], None]:
    def run(ctx: Context) -> None:
        judged, unsteady = [], []
        for prompt in PENALTY_PROMPTS:
            if not _repeats(_near_greedy(ctx, prompt, None)):
                continue  # nothing repeats: no penalty would change this answer
            plain = _steady_plain(ctx, prompt)
            if plain is None:
                unsteady.append(prompt)  # no reference a change could be measured against
                continue
            if _near_greedy(ctx, prompt, param, **{param: strong}) != plain:
                return
            judged.append(plain)  # this answer may simply not hinge on a repeat: try the next prompt
        if judged:
            ctx.fail(f"{param} {strong} left every seeded near-greedy answer that repeats words unchanged "
                     f"({judged}): {param} is ignored", ctx.last_exchange())
        if unsteady:
            raise Skipped(f"cannot judge {param}: the near-greedy answer to {unsteady} never came back the same "
                          f"twice in a row in {STEADY_ASKS} identical requests, so there is no answer to compare with")
        raise Skipped(f"cannot judge {param}: no near-greedy answer repeated a word, so no penalty had "
                      "anything to act on")

    run.__doc__ = (f"{param} {strong} changes a seeded near-greedy answer that repeats words "
                   "(against the same request without it).")
    return run


_PROBES: dict[str, Callable[[str, Any, Temperatures], Callable[[Context], None]]] = {
    "collapse": _collapse_check, "greedy": _greedy_check, "keep_k": _keep_k_check, "penalty": _penalty_check,
}


def effect_checks(api: spec.ApiSpec) -> Iterator[Check]:
    """One check per parameter of `api` with an `x-effect`, grouped by probe (spec.PROBES' order)."""
    temps = temperatures(api)
    for probe in spec.PROBES:
        for param in api.parameters:
            if param.effect is None or param.effect.probe != probe:
                continue
            run = _PROBES[probe](param.name, probe_value(api, param), temps)
            yield Check(id=_check_id(param), feature=str(param.feature), category="effect", run=run,
                        description=(run.__doc__ or "").strip())


for _item in effect_checks(spec.default()):
    register(_item)
