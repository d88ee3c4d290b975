"""Parameter ranges, generated from the spec: a value inside each range is accepted, values beyond
each end are rejected with a 4xx naming the parameter (the spec says 400), exclusive ends are rejected and
inclusive ends accepted, a wrong type is rejected and null is accepted exactly when nullable.

No range is written here: every value is derived from the target's spec (`target.api`), and
so is what a parameter's checks rely on (its `x-feature`) and what it needs alongside (`x-requires`).
Rejecting a value is a must; that it is exactly 400, and the envelope's shape, are judged once by
the errors checks. Rejecting an exclusive end that OpenAI's API accepts (temperature 0) is a should.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import spec
from conformance.context import Context
from conformance.registry import Check, check, check_factory
from conformance.target import Target

FEATURE = "ranges"
# A real token id in any vocabulary, used as the logit_bias key when the bias value is under test.
_BIAS_TOKEN = "1"
_WRONG_TYPE = "abc"


def _param(path: str) -> str:
    """The top-level request field a range path belongs to (`logit_bias.*` -> `logit_bias`)."""
    return path.split(".")[0]


def _relies_on(api: spec.ApiSpec, path: str) -> tuple[str, ...]:
    """The feature a parameter belongs to: declared unsupported, its checks are "not supported"."""
    feature = api.parameter(_param(path)).feature
    return (feature,) if feature else ()


def _body(ctx: Context, path: str, value: Any) -> dict[str, Any]:
    """A small valid request with the parameter at `path` set to `value` (plus what it needs)."""
    param = _param(path)
    params: dict[str, Any] = {"max_tokens": 1 if param == "n" else 4}
    if path.endswith(".*"):
        params[param] = {_BIAS_TOKEN: value}  # a value of the map, under a real token id
    else:
        params[param] = value
    params.update(ctx.target.api.parameter(param).requires)  # top_logprobs needs logprobs: true
    return ctx.body(**params)


def _num(value: float, kind: str) -> int | float:
    if kind == "integer":
        return int(value)
    value = round(float(value), 6)
    return int(value) if value.is_integer() else value


def _low(rng: spec.ParamRange) -> float | None:
    return rng.minimum if rng.minimum is not None else rng.exclusive_minimum


def _high(rng: spec.ParamRange) -> float | None:
    return rng.maximum if rng.maximum is not None else rng.exclusive_maximum


def _inside(rng: spec.ParamRange) -> int | float:
    """A value strictly inside the range, cheap to serve (small integers, midpoints of numbers)."""
    low, high = _low(rng), _high(rng)
    if rng.kind == "integer":
        if rng.contains(0) and 0 not in (low, high):
            return 0
        if low is not None:
            first = int(low) if rng.minimum is not None else int(low) + 1  # the smallest valid integer
            value = first + 1
        else:
            value = int(high) - 2
        if not rng.contains(value):
            raise ValueError(f"no integer strictly inside {rng.path}: {rng.describe()}")
        return value
    if low is not None and high is not None:
        return _num((low + high) / 2, "number")
    return _num(low + 1 if low is not None else high - 1, "number")


def _step(rng: spec.ParamRange) -> float:
    """How far beyond an end an 'outside' value lies: 1 for integers, a clear step for numbers."""
    if rng.kind == "integer":
        return 1
    low, high = _low(rng), _high(rng)
    span = (high - low) if low is not None and high is not None else 0.0
    return max(0.5, 0.1 * span)


def _spec_note(api: spec.ApiSpec, rng: spec.ParamRange, profile: str) -> str | None:
    parts = []
    if rng.decision:
        parts.append(rng.decision)
    if profile != "documented":
        documented = api.parameter_ranges("documented").get(rng.path)
        shown = f" (documented: {documented.describe()})" if documented else ""
        parts.append(f"profile {profile}: {rng.describe()}{shown}")
    return "; ".join(parts) or None


def _openai_includes(api: spec.ApiSpec, rng: spec.ParamRange, profile: str, value: float) -> bool:
    """Whether the documented profile excludes `value`, an end of `rng`, where OpenAI's API accepts it.

    Rejecting it is then what the documented API recommends, not what every compatible endpoint
    must do: a should-level rule.
    """
    if profile != "documented":
        return False
    openai = api.parameter_ranges("openai").get(rng.path)
    return openai is not None and openai.contains(value)


def needs_param(ctx: Context, path: str, inside: Any) -> None:
    """Not supported when the endpoint refuses even a valid value of the parameter (it does not
    know it: transformers serve answers 422 to top_k): `inside` fails for that, once, and the
    parameter's other range checks cannot tell anything (one deviation, one failure)."""
    status = ctx.memo(f"ranges.valid.{path}", lambda: ctx.chat(_body(ctx, path, inside)).status)
    if status != 200:
        ctx.lacks(f"{_param(path)} (a valid value, {inside!r}, is answered {status})", f"ranges.{path}.inside")


def _accepts(path: str, value: Any, relies: tuple[str, ...], inside: Any = None) -> Callable[[Context], None]:
    """`inside`: the parameter's valid value, when this is not the `inside` check itself."""
    def run(ctx: Context) -> None:
        if relies:
            ctx.uses(*relies)
        if inside is not None:
            needs_param(ctx, path, inside)
        ctx.ok_json(_body(ctx, path, value))

    return run


def _rejects(path: str, value: Any, relies: tuple[str, ...], what: str, inside: Any) -> Callable[[Context], None]:
    def run(ctx: Context) -> None:
        if relies:
            ctx.uses(*relies)
        needs_param(ctx, path, inside)
        exchange = ctx.chat(_body(ctx, path, value))
        ctx.expect_error(exchange, [400], param=_param(path), what=what)

    return run


@check_factory
def range_checks(target: Target) -> Iterator[Check]:
    """Inside, outside, end, type and null checks for every bounded parameter of the profile."""
    for rng in target.api.parameter_ranges(target.profile).values():
        yield from _checks_for(target.api, rng, target.profile)


def _checks_for(api: spec.ApiSpec, rng: spec.ParamRange, profile: str) -> Iterator[Check]:
    path = rng.path
    relies = _relies_on(api, path)
    note = _spec_note(api, rng, profile)
    shown = f"{path} ({rng.describe()}, profile {profile})"

    def make(suffix: str, category: str, run: Callable[[Context], None], description: str,
             severity: str = "must") -> Check:
        return Check(id=f"ranges.{path}.{suffix}", feature=FEATURE, category=category, run=run,
                     description=description, spec_note=note, severity=severity)

    inside = _inside(rng)
    yield make("inside", "inside", _accepts(path, inside, relies),
               f"{shown}: {inside!r} lies inside, so it is accepted (200)")
    step = _step(rng)
    low, high = _low(rng), _high(rng)
    if low is not None:
        value = _num(low - step, rng.kind)
        yield make("below_min", "outside", _rejects(path, value, relies, f"{_param(path)}={value!r}", inside),
                   f"{shown}: {value!r} lies below the range, so it is rejected (4xx naming {_param(path)})")
    if high is not None:
        value = _num(high + step, rng.kind)
        yield make("above_max", "outside", _rejects(path, value, relies, f"{_param(path)}={value!r}", inside),
                   f"{shown}: {value!r} lies above the range, so it is rejected (4xx naming {_param(path)})")
    for side, inclusive, exclusive in (("min", rng.minimum, rng.exclusive_minimum),
                                       ("max", rng.maximum, rng.exclusive_maximum)):
        if exclusive is not None:
            value = _num(exclusive, rng.kind)
            openai = _openai_includes(api, rng, profile, value)
            yield make(f"exclusive_{side}_end", "exclusive-end",
                       _rejects(path, value, relies, f"{_param(path)}={value!r} (exclusive end)", inside),
                       f"{shown}: the exclusive end {value!r} is rejected (400)"
                       + (" (should: OpenAI's API accepts it)" if openai else ""),
                       severity="should" if openai else "must")
        if inclusive is not None:
            value = _num(inclusive, rng.kind)
            yield make(f"inclusive_{side}_end", "inclusive-end", _accepts(path, value, relies, inside),
                       f"{shown}: the inclusive end {value!r} is accepted (200)")
    yield make("wrong_type", "wrong-type",
               _rejects(path, _WRONG_TYPE, relies, f"{_param(path)}={_WRONG_TYPE!r}", inside),
               f"{shown}: a string is rejected (4xx naming {_param(path)})")
    if rng.nullable:
        yield make("null", "null", _accepts(path, None, relies, inside), f"{shown}: null is accepted (nullable)")
    else:
        yield make("null", "null", _rejects(path, None, relies, f"{_param(path)}=null", inside),
                   f"{shown}: null is rejected (not nullable)")


@check("ranges.stop.too_many", FEATURE, "outside")
def stop_too_many(ctx: Context) -> None:
    """One stop sequence more than the spec allows is rejected (4xx naming stop)."""
    count = spec.max_stop_sequences() + 1
    stops = [f"zq{i}" for i in range(count)]
    exchange = ctx.chat(ctx.body(stop=stops, max_tokens=4))
    ctx.expect_error(exchange, [400], param="stop", what=f"{count} stop sequences")


@check("ranges.top_logprobs.requires_logprobs", FEATURE, "cross-field")
def top_logprobs_requires_logprobs(ctx: Context) -> None:
    """top_logprobs without logprobs: true is rejected (4xx naming top_logprobs)."""
    ctx.uses("logprobs")
    exchange = ctx.chat(ctx.body(top_logprobs=2, max_tokens=4))
    ctx.expect_error(exchange, [400], param="top_logprobs", what="top_logprobs without logprobs")


@check("ranges.messages.empty", FEATURE, "outside")
def messages_empty(ctx: Context) -> None:
    """An empty messages list is rejected (4xx, the spec says 400)."""
    exchange = ctx.chat(ctx.body(messages=[], max_tokens=4))
    ctx.expect_error(exchange, [400], what="messages []")
