"""Is the client the bottleneck? Warnings from the load generator's own CPU, event-loop lag and
open-loop send lag, so a result limited by the client is never mistaken for the server's. And is
the endpoint still there? `GoneWatch` tells when it has stopped answering mid-step."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from load.config import StepSpec
from load.fidelity import StepFidelity

CPU_LIMIT = 0.85  # fraction of one core a worker process may use before its timing is suspect
# A process past this share of a core is near its limit: the client-capacity benchmark
# (benchmarks/client_capacity.py, docs/benchmarks.md) saw ITL p50 exact up to about 75% and going
# off past it, so a run is advised to spread its load before it gets there.
CPU_NEAR = 0.7
LOOP_LAG_P99_MS = 5.0  # the event loop woke this late: timestamps may be late by as much
SEND_LAG_P99_MS = 10.0  # open loop: requests went out this much later than scheduled


def workers_needed(health: Sequence[Mapping[str, Any]]) -> int:
    """How many load processes this run's CPU use needs, each at most CPU_NEAR of a core."""
    total = sum(h.get("cpu_fraction", 0.0) for h in health)
    return max(1, math.ceil(total / CPU_NEAR))


def client_warnings(metrics: Mapping[str, Any], health: Sequence[Mapping[str, Any]], step: StepSpec,
                    fidelity: StepFidelity | None = None, spread: str = "--workers") -> list[str]:
    """Plain-language warnings; an empty list means the client kept up. The client is blamed only
    where its own figures show it: its CPU, its event-loop lag, or users that were all busy.
    `spread`: the option that adds load processes (--expect-workers for a run over remote workers)."""
    warnings = []
    advice = f"{spread} {max(workers_needed(health), len(health) + 1)}"  # the processes this load needs
    busy = [h for h in health if h.get("cpu_fraction", 0.0) > CPU_LIMIT]
    for h in busy:
        warnings.append(f"client-limited: load worker {h['worker']} used {h['cpu_fraction']:.0%} of a CPU core; "
                        "its timestamps and the offered load may be limited by the client "
                        f"(this load needs {advice})")
    near = [h for h in health if CPU_NEAR < h.get("cpu_fraction", 0.0) <= CPU_LIMIT]
    if near and not busy:
        used = ", ".join(f"{h['cpu_fraction']:.0%}" for h in near)
        warnings.append(f"client near its limit: load process(es) used {used} of a CPU core for "
                        f"{metrics.get('token_events_per_s', 0.0):,.0f} token events/s; past about "
                        f"{CPU_NEAR:.0%} token timestamps start to come late (run this load with {advice})")
    p99 = loop_lag_summary(health)["p99"]
    lagging = p99 is not None and p99 > LOOP_LAG_P99_MS
    if lagging:
        warnings.append(f"client-limited: the client's event loop ran {p99:.1f} ms late at p99 "
                        f"(limit {LOOP_LAG_P99_MS:g} ms); token timestamps may be late by as much "
                        f"(run this load with {advice})")
    send_lag = metrics.get("send_lag_ms") or {}
    if (send_lag.get("p99") or 0.0) > SEND_LAG_P99_MS:  # open loop only: closed-loop requests have no schedule
        late = fidelity.late_claims if fidelity is not None else 0
        prefix = "client-limited: "
        if late:
            cause = (f"{late} requests came due while all {step.users} users were busy, so the offered rate "
                     "was not the asked one (raise --users)")
        elif busy or near or lagging:
            cause = "the client was short of CPU (see above), so the offered rate was not the asked one"
        else:
            prefix, cause = "", ("the client had free users and CPU to spare, so the delay was in sending itself "
                                 "(connecting, or the endpoint accepting slowly)")
        warnings.append(f"{prefix}requests went out {send_lag['p99']:.1f} ms after their scheduled time at p99 "
                        f"(limit {SEND_LAG_P99_MS:g} ms): {cause}")
    return warnings


def data_warnings(metrics: Mapping[str, Any]) -> list[str]:
    """Warnings about what the server did: streams whose token events disagree with their usage,
    keep-alive connections it closed without saying so, 429s without Retry-After."""
    warnings = []
    if metrics.get("token_count_mismatches"):
        warnings.append(f"{metrics['token_count_mismatches']} of {metrics['requests_ok']} streams had a number of "
                        "token events (content and reasoning) different from their usage.completion_tokens (the "
                        "server puts several tokens in one event, or its usage is wrong): output tokens/s uses usage, "
                        "ITL uses events")
    if metrics.get("stale_connection_retries"):
        warnings.append(f"keep-alive: the server closed {metrics['stale_connection_retries']} connections after an "
                        "answer without sending 'Connection: close'; a request sent on one got no byte back and was "
                        "sent once more on a fresh connection (not counted as an error; its latencies include the "
                        "lost attempt)")
    if metrics.get("http_429_without_retry_after"):
        warnings.append(f"{metrics['http_429_without_retry_after']} answers of 429 came without a Retry-After header")
    return warnings


def loop_lag_summary(health: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """p50/p99/max of the event-loop lag over all processes, in ms."""
    lags = np.concatenate([np.asarray(h.get("loop_lag_ns", []), dtype=np.float64) for h in health] or [np.empty(0)])
    if not lags.size:
        return {"p50": None, "p99": None, "max": None}
    p50, p99 = np.percentile(lags, [50, 99]) / 1e6
    return {"p50": float(p50), "p99": float(p99), "max": float(lags.max() / 1e6)}


class GoneWatch:
    """Tells when the endpoint has stopped answering during a step.

    Either the server this run started has exited (`server_exit` says how), or every request that
    finished in each of the last REFUSED_POLLS polls (about a second apart) had its connection
    refused. One refused request among answered ones is the server's business, not this.
    """

    REFUSED_POLLS = 2

    def __init__(self, start: float, server_exit: Callable[[], str | None] | None = None) -> None:
        """`start`: when the step began (time.monotonic()); `server_exit`: how a server this run
        started has ended, None while it runs."""
        self.server_exit = server_exit
        self._done = self._refused = self._streak = 0
        self._last_poll = self._since = start

    def update(self, statuses: list[dict[str, Any]], now: float) -> str | None:
        """Feed one poll's statuses; the reason once the endpoint is gone, else None."""
        if self.server_exit is not None and (status := self.server_exit()) is not None:
            return f"embedded server exited with {status}"
        done = sum(s["done"] for s in statuses)
        refused = sum(s.get("refused", 0) for s in statuses)
        new_done, new_refused = done - self._done, refused - self._refused
        self._done, self._refused = done, refused
        if new_done and new_refused == new_done:
            if not self._streak:
                self._since = self._last_poll
            self._streak += 1
        elif new_done:
            self._streak = 0
        self._last_poll = now
        if self._streak >= self.REFUSED_POLLS:
            return f"every request that ended in the last {now - self._since:.1f} s had its connection refused"
        return None
