"""`--find-capacity`: the highest concurrency (closed loop) or arrival rate (open loop) at which
every `--slo` objective holds, found by ramping up and then bisecting.

Ramp: `start`, then x`factor` after each step that meets every objective, until one misses (or
`max_level`). Bisect: between the highest level that met them and the lowest above it that missed,
until one user apart (closed loop) or within `tolerance` of the level (open loop). Bounded by
`max_steps` and `max_time_s` (a step that would end past it is not started).

A step that is clearly saturated is stopped early (`early_stop`), so the search does not spend
whole steps in overload: its latest answers' TTFT already at twice a TTFT objective, its error
share far past an error_rate objective, or its queue growing (requests in flight rising poll
after poll to over twice their number at the end of the warm-up while the latest TTFTs rise).
Such a step counts as missed. In open loop, so does a step that sent clearly more requests/s
than the server answered at any level of the search (`unsustainable`): just past the server's
throughput a queue grows too slowly for a short step's latencies to show it.

Pure logic over step outcomes and progress polls (no Locust), so it is tested with fakes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from load.config import StepSpec
from load.slo import ERROR_RATE

MIN_SAMPLES = 20  # answers an early-stop rule needs before it may judge
SATURATION_POLLS = 3  # polls in a row in-flight must rise for "queue growing"


def _round_rate(rate: float) -> float:
    """Three significant digits: rates in reports stay readable."""
    return float(f"{rate:.3g}")


@dataclass
class CapacitySearch:
    """Decides the next step from the outcomes so far (`next_step`) and when to stop one early."""

    template: StepSpec  # duration, warm-up, arrival, pool of users (open loop), max requests
    slo: Mapping[str, float]
    open_loop: bool
    start: float
    max_level: float | None = None
    max_steps: int = 12
    max_time_s: float = 900.0
    tolerance: float = 0.1
    factor: float = 2.0
    clock: Callable[[], float] = time.monotonic
    began: float = field(init=False)
    stop_reason: str | None = field(init=False, default=None)
    _polls: dict[int, list[tuple[float, int, list[float]]]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.began = self.clock()

    # ---- the search -----------------------------------------------------------------------

    def unsustainable(self, outcome: Any, outcomes: Sequence[Any]) -> str | None:
        """Open loop: why the step's rate cannot be held however long it runs, or None.

        Past the server's throughput the queue grows without bound, but slowly just past it, so a
        short step can still meet latency objectives. The most requests/s the server answered at
        any level of the search (a saturated step shows its ceiling) bounds what is sustainable:
        a step that sent clearly more than that ceiling in its window (by 3 requests or 5%, for
        the requests still in flight at its edges) fails.
        """
        sent, window = outcome.metrics.get("requests_sent"), outcome.metrics.get("window_s")
        if not self.open_loop or not sent or not window:
            return None
        ceiling = max(o.metrics.get("requests_per_s") or 0.0 for o in outcomes)
        if sent > ceiling * window + max(3.0, 0.05 * sent):
            return (f"unsustainable: {sent / window:.3g} requests/s sent, more than the {ceiling:.3g}/s the "
                    "server answered at any level (its queue grows)")
        return None

    def passed(self, outcome: Any, outcomes: Sequence[Any] = ()) -> bool:
        """The step ran to its end, sent what was asked (a level the client could not offer proves
        nothing), met every objective, and (open loop) its rate is sustainable in the light of every
        step in `outcomes`."""
        sent_as_asked = outcome.fidelity is None or outcome.fidelity.ok
        return (not outcome.aborted and not outcome.stopped_early and sent_as_asked
                and all(v["met"] for v in outcome.slo)
                and self.unsustainable(outcome, [*outcomes, outcome]) is None)

    def _bounds(self, outcomes: Sequence[Any]) -> tuple[float | None, float | None]:
        """(highest level that passed, lowest failing level above it)."""
        good = [o.spec.level for o in outcomes if self.passed(o, outcomes)]
        low = max(good, default=None)
        high = min((o.spec.level for o in outcomes
                    if not self.passed(o, outcomes) and (low is None or o.spec.level > low)), default=None)
        return low, high

    def _next_level(self, outcomes: Sequence[Any]) -> float | None:
        low, high = self._bounds(outcomes)
        if not outcomes:
            return self.start
        if high is None:  # still ramping
            if low is None:
                return None
            if self.max_level is not None and low >= self.max_level:
                self.stop_reason = f"every level up to --capacity-max-level {self.max_level:g} met the objectives"
                return None
            level = low * self.factor if self.open_loop else max(low + 1, math.floor(low * self.factor))
            return min(level, self.max_level) if self.max_level is not None else level
        floor = low if low is not None else 0.0
        if self.open_loop:
            if low is not None and high - low <= self.tolerance * high:
                self.stop_reason = f"converged: {low:g} met, {high:g} missed (within {self.tolerance:.0%})"
                return None
            level = _round_rate((floor + high) / 2)
        else:
            if high - floor <= 1:
                self.stop_reason = (f"converged: {low:g} users met, {high:g} missed" if low is not None
                                    else f"even {high:g} user(s) missed the objectives")
                return None
            level = float((int(floor) + int(high)) // 2)
        if any(o.spec.level == level for o in outcomes):
            self.stop_reason = f"converged: {level:g} was already probed"
            return None
        return level

    def next_step(self, outcomes: Sequence[Any]) -> StepSpec | None:
        """The next step to run, or None when the search is over (`stop_reason` says why)."""
        if any(o.aborted for o in outcomes):
            self.stop_reason = "the run was aborted"
            return None
        if len(outcomes) >= self.max_steps:
            self.stop_reason = f"the step limit (--capacity-max-steps {self.max_steps}) was reached"
            return None
        if self.clock() - self.began + self.template.duration_s > self.max_time_s:
            self.stop_reason = f"the time limit (--capacity-max-time {self.max_time_s:g} s) was reached"
            return None
        level = self._next_level(outcomes)
        if level is None:
            return None
        users = self.template.users if self.open_loop else int(level)
        return dataclasses.replace(self.template, index=len(outcomes), users=users,
                                   rate=level if self.open_loop else None)

    def progress_line(self, outcomes: Sequence[Any], step: StepSpec | None) -> str:
        """What the last step told the search and what it does next, for the progress output."""
        last = outcomes[-1]
        verdict = "met every objective" if self.passed(last, outcomes) else (
            last.stopped_early or self.unsustainable(last, outcomes)
            or "missed " + ", ".join(v["objective"] for v in last.slo if not v["met"]))
        following = f"next: {step.label}" if step is not None else f"done: {self.stop_reason}"
        return f"  capacity search: {last.spec.label} {verdict}; {following}"

    # ---- early stop -----------------------------------------------------------------------

    def early_stop(self, step: StepSpec, elapsed_s: float, statuses: list[dict[str, Any]]) -> str | None:
        """Why this step is clearly saturated already, or None (asked once per progress poll)."""
        polls = self._polls.setdefault(step.index, [])
        recent = [v for s in statuses for v in s.get("ttft_ms_recent", ())]
        inflight = sum(s["inflight"] for s in statuses)
        polls.append((elapsed_s, inflight, recent))
        if elapsed_s < step.warmup_s + 1.0:
            return None
        for key, limit in self.slo.items():
            if key.startswith("ttft_p") and len(recent) >= MIN_SAMPLES:
                pct = float(key.removeprefix("ttft_p").replace("_", "."))
                value = float(np.percentile(recent, pct))
                if value > 2 * limit:
                    return (f"saturated: TTFT p{pct:g} of the latest {len(recent)} answers is {value:.0f} ms, "
                            f"over twice the objective's {limit:g} ms")
        done = sum(s["done"] for s in statuses)
        failed = sum(s["failed"] for s in statuses)
        if ERROR_RATE in self.slo and done >= MIN_SAMPLES and failed / done > 2 * self.slo[ERROR_RATE] + 0.02:
            return f"saturated: {failed} of {done} requests failed (objective: error_rate {self.slo[ERROR_RATE]:g})"
        measured = [p for p in polls if p[0] >= step.warmup_s]
        if len(measured) > SATURATION_POLLS:
            counts = [p[1] for p in measured[-SATURATION_POLLS - 1:]]
            first_count, first_ttft = measured[0][1], measured[0][2]
            rising = all(b > a for a, b in zip(counts, counts[1:], strict=False))
            ttft_rising = (not first_ttft or not recent
                           or float(np.median(recent)) > 1.5 * float(np.median(first_ttft)))
            if rising and inflight > 2 * first_count + 4 and ttft_rising:
                return (f"saturated: requests in flight rose from {first_count} to {inflight} through the step "
                        "(the queue grows)")
        return None

    # ---- the answer -----------------------------------------------------------------------

    def result(self, outcomes: Sequence[Any]) -> dict[str, Any]:
        """Every probe, the answer with its margin to each objective, and why the search ended."""
        low, high = self._bounds(outcomes)
        answer = next((o for o in outcomes if self.passed(o, outcomes) and o.spec.level == low), None)
        margin = []
        for verdict in (answer.slo if answer is not None else []):
            limit, measured = verdict.get("limit", verdict.get("limit_ms")), verdict.get("measured")
            measured = verdict.get("measured_ms") if measured is None else measured
            headroom = (limit - measured) / limit if limit and measured is not None else None
            margin.append({"objective": verdict["objective"], "limit": limit, "measured": measured,
                           "headroom": headroom})
        probes = [{"order": i + 1, "level": o.spec.level, "label": o.spec.label, "passed": self.passed(o, outcomes),
                   "stopped_early": o.stopped_early, "unsustainable": self.unsustainable(o, outcomes),
                   "aborted": o.aborted,
                   "missed": [v["objective"] for v in o.slo if not v["met"]],
                   "goodput_per_s": o.metrics.get("goodput_per_s"),
                   "output_tokens_per_s": o.metrics.get("output_tokens_per_s"),
                   "duration_s": o.window.seconds + o.spec.warmup_s} for i, o in enumerate(outcomes)]
        return {"mode": "rate" if self.open_loop else "users", "objectives": dict(self.slo), "capacity": low,
                "capacity_label": answer.spec.label if answer is not None else None, "first_failing": high,
                "margin": margin, "probes": probes, "stop_reason": self.stop_reason,
                "max_steps": self.max_steps, "max_time_s": self.max_time_s}
