"""Drive Locust through the steps of a run, in this process or over master/worker processes
(load.distributed).

Both backends give the same thing back per step: every raw request record and each process's
health (CPU, event-loop lag), so one process and N workers produce reports of the same form.
Imports Locust (gevent monkey-patching): used by `python -m load`, not by library code.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
from locust.env import Environment

from load.config import LoadConfig, MasterOptions, StepSpec
from load.distributed import DistributedBackend
from load.fidelity import (
    COMPLETE,
    DRAIN_TIMEOUT,
    DURATION,
    GONE,
    INTERRUPTED,
    STOPPED_EARLY,
    ProcessCounts,
    judge_step,
)
from load.health import GoneWatch, client_warnings, data_warnings
from load.metrics import Window, step_metrics
from load.outcome import StepOutcome
from load.process import ProcessState, lead_s
from load.records import RequestRecord
from load.slo import judge
from load.users import bound_user_class, probe_loop_lag

log = logging.getLogger("load")
INTERRUPT_DRAIN_S = 2.0  # after Ctrl-C, how long requests in flight may still finish
POLL_S = 0.2  # how often the step loop asks the processes whether they have finished
# How often it prints progress and asks GoneWatch and a capacity search's early stop, whose rules
# count polls of this spacing.
CHECK_S = 1.0


class _NoSpawnRateWarning(logging.Filter):
    """Locust warns about spawn rates over 100/s; every step here starts its users at once on purpose
    (within ~50 ms, inside the warm-up), so the warning would only be noise on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "spawn rate is very high" not in record.getMessage()


class LocalBackend:
    """All users in this process."""

    workers = 1
    spread = "--workers"  # the option that would add processes

    def __init__(self, config: LoadConfig) -> None:
        self.process = ProcessState()
        self.process.configure(config)
        self.environment = Environment(user_classes=[bound_user_class(self.process)])
        self.runner = self.environment.create_local_runner()
        self._probe = gevent.spawn(probe_loop_lag, self.process)

    def start_step(self, step: StepSpec) -> None:
        self.process.begin_step(step)
        self.runner.start(step.users, spawn_rate=max(step.users, 1) * 20, wait=False)

    def status(self) -> list[dict[str, Any]]:
        return [self.process.status()]

    def stop_sending(self) -> None:
        self.process.stop()

    def finish(self) -> tuple[list[RequestRecord], list[dict[str, Any]], list[ProcessCounts]]:
        health = self.process.health()
        self.process.stop()
        self.runner.stop()  # users still in a request end it as cut off (their records say so)
        return list(self.process.records), [health], [self.process.counts()]

    def lost(self) -> list[str]:
        return []  # this process cannot lose itself

    def notes(self) -> list[str]:
        return []

    def close(self) -> None:
        self._probe.kill()
        self.runner.quit()


def _progress_line(step: StepSpec, total_steps: int, elapsed: float, statuses: list[dict[str, Any]],
                   tokens_per_s: float) -> str:
    """One line of how far a step is: turns scheduled (of the count asked), requests sent, ended, failed."""
    scheduled = sum(s["scheduled"] for s in statuses)
    sent = sum(s["sent"] for s in statuses)
    done = sum(s["done"] for s in statuses)
    failed = sum(s["failed"] for s in statuses)
    inflight = sum(s["inflight"] for s in statuses)
    of = f"/{total_steps}" if total_steps else ""  # a capacity search does not know its count
    asked = f"/{step.max_requests}" if step.max_requests is not None else ""
    length = f"/{step.duration_s:g}" if math.isfinite(step.duration_s) else ""
    return (f"[step {step.index + 1}{of} {step.label}] {elapsed:5.1f}{length} s  "
            f"scheduled {scheduled}{asked}  sent {sent}  done {done}  failed {failed}  in flight {inflight}  "
            f"output tok/s {tokens_per_s:,.0f}")


def _finished(statuses: list[dict[str, Any]], workers: int) -> bool:
    """Every process has taken its last turn, sent every turn it took, and has nothing in flight."""
    return len(statuses) >= workers and all(s["finished"] for s in statuses)


def run_step(
    backend: LocalBackend | DistributedBackend,
    step: StepSpec,
    *,
    total_steps: int,
    drain_s: float,
    slo: dict[str, float],
    progress: Callable[[str], None] | None = None,
    server_exit: Callable[[], str | None] | None = None,
    interrupt: gevent.event.Event | None = None,
    early_stop: Callable[[StepSpec, float, list[dict[str, Any]]], str | None] | None = None,
) -> StepOutcome:
    """Run one step until every process has taken its last turn and every sent request has ended.

    A process takes no more turns once its share of --max-requests or of the schedule (a trace) is
    used up, or the step's duration has passed by its own clock; requests then in flight get up to
    `drain_s` to end. The step ends early, its outcome marked `aborted`, when the endpoint stops
    answering, or when `interrupt` is set (Ctrl-C: then also `interrupted`; requests in flight get
    INTERRUPT_DRAIN_S). `early_stop(step, elapsed s, statuses)`, asked at every poll, may end it
    sooner with a reason (a capacity search stops a clearly saturated step), then `stopped_early`.
    Why the step ended, and whether it sent what was asked, is its `fidelity`.
    """
    interrupt = interrupt or gevent.event.Event()
    start = time.monotonic()
    backend.start_step(step)
    last_tokens, last_time = 0, start
    watch = GoneWatch(start, server_exit)
    aborted, interrupted, stopped_early = None, False, None
    end, end_detail = DURATION, ""
    statuses: list[dict[str, Any]] = []
    # Records are timed from each process's time 0, a lead after the step began (load.process.lead_s).
    lead = lead_s(step.users, backend.workers)
    give_up = lead + step.duration_s + drain_s + POLL_S
    while True:
        if interrupt.wait(POLL_S):
            interrupted = True
            aborted = f"interrupted (Ctrl-C) in step {step.label} after {time.monotonic() - start:.1f} s"
            end, end_detail = INTERRUPTED, aborted
            break
        statuses = backend.status()
        now = time.monotonic()
        if now - last_time >= CHECK_S:  # progress, the endpoint's health, saturation: once a second
            if progress:
                tokens = sum(s["tokens"] for s in statuses)
                progress(_progress_line(step, total_steps, now - start, statuses,
                                        (tokens - last_tokens) / max(now - last_time, 1e-9)))
                last_tokens = tokens
            last_time = now
            gone = watch.update(statuses, now)
            if gone is not None:
                aborted = f"the endpoint stopped answering in step {step.label} after {now - start:.1f} s: {gone}"
                end, end_detail = GONE, aborted
                break
            if early_stop is not None and (stopped_early := early_stop(step, now - start, statuses)) is not None:
                end, end_detail = STOPPED_EARLY, stopped_early
                break
        if _finished(statuses, backend.workers):
            by_duration = any(s["ended_by"] == "duration" for s in statuses)
            end = DURATION if by_duration else COMPLETE
            end_detail = (f"--duration {step.duration_s:g} s passed and every request sent had ended"
                          if by_duration else "every request scheduled was sent and had ended")
            break
        if now - start >= give_up:
            end, end_detail = DRAIN_TIMEOUT, (f"requests were still in flight {drain_s:g} s after --duration "
                                              f"{step.duration_s:g} s")
            break
    stop_ns = int((time.monotonic() - start - lead) * 1e9)  # on the records' clock
    backend.stop_sending()
    if end in (INTERRUPTED, GONE, STOPPED_EARLY):  # requests in flight may still end, for a while
        deadline = time.monotonic() + (INTERRUPT_DRAIN_S if interrupted else drain_s)
        while time.monotonic() < deadline and not _finished(backend.status(), backend.workers):
            gevent.sleep(0.05)
    records, health, counts = backend.finish()
    lost = backend.lost()  # workers gone mid-step: their records until then are in `records`
    if lost and aborted is None:
        aborted = f"{'; '.join(lost)}: later steps were not run"
    if end == COMPLETE:  # the window ends with the last reply, not when the poll noticed it
        end_ns = max((r.end_ns for r in records if r.end_ns is not None), default=stop_ns)
    elif end in (DURATION, DRAIN_TIMEOUT):
        end_ns = int(step.duration_s * 1e9) if math.isfinite(step.duration_s) else stop_ns
    else:
        end_ns = stop_ns
    window = Window(int(step.warmup_s * 1e9), max(end_ns, int(step.warmup_s * 1e9) + 1))
    metrics = step_metrics(records, window, slo)
    fidelity = judge_step(asked=step.max_requests, asked_rate=step.rate or step.schedule_rate, users=step.users,
                          counts=counts, records=records, end=end, end_detail=end_detail,
                          window_start_ns=window.start_ns, window_end_ns=window.end_ns, lost=lost)
    outcome = StepOutcome(step, records, health, window, metrics, judge(metrics, slo), aborted=aborted,
                          interrupted=interrupted, started_at=start, stopped_early=stopped_early, fidelity=fidelity)
    outcome.warnings = (client_warnings(metrics, health, step, fidelity, backend.spread) + data_warnings(metrics)
                        + backend.notes())
    return outcome


def run_load(
    config: LoadConfig,
    steps: list[StepSpec],
    *,
    workers: int = 1,
    remote: MasterOptions | None = None,
    slo: dict[str, float] | None = None,
    progress: Callable[[str], None] | None = None,
    server_exit: Callable[[], str | None] | None = None,
    plan: Callable[[list[StepOutcome]], StepSpec | None] | None = None,
    early_stop: Callable[[StepSpec, float, list[dict[str, Any]]], str | None] | None = None,
) -> list[StepOutcome]:
    """Every step in order against one backend; the backend is closed whatever happens.

    A step that finds the endpoint gone ends the run: later steps are not started.
    `server_exit` says how a server this run started has ended (None while it runs).
    With `remote`, the `workers` are not started here: the run waits for them on its address.
    With `plan`, the steps come from it instead, one at a time from the outcomes so far, until it
    gives None (a capacity search); `steps` then only sizes the progress lines.
    """
    logging.getLogger("locust").setLevel(logging.WARNING)
    logging.getLogger("locust.runners").addFilter(_NoSpawnRateWarning())
    backend: LocalBackend | DistributedBackend
    if remote is not None or workers > 1:
        backend = DistributedBackend(config, workers, remote, say=progress)
    else:
        backend = LocalBackend(config)
    outcomes = []
    # Ctrl-C sets an event the step loop waits on. Left to Python's default handler, the
    # KeyboardInterrupt would land in whichever greenlet runs (often a user's), not in this loop.
    interrupt = gevent.event.Event()
    on_sigint = gevent.signal_handler(signal.SIGINT, interrupt.set)
    planned = iter(steps) if plan is None else iter(lambda: plan(outcomes), None)
    try:
        for step in planned:
            outcome = run_step(backend, step, total_steps=len(steps), drain_s=config.timeout_s,
                               slo=slo or {}, progress=progress, server_exit=server_exit, interrupt=interrupt,
                               early_stop=early_stop)
            outcomes.append(outcome)
            if progress:
                for warning in outcome.warnings:
                    progress(f"  warning: {warning}")
            if outcome.aborted:
                break
    finally:
        on_sigint.cancel()
        backend.close()
    return outcomes
