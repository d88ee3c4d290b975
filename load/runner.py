"""Drive Locust through the steps of a run, in this process or over master/worker processes.

Both backends give the same thing back per step: every raw request record and each process's
health (CPU, event-loop lag), so one process and N workers produce reports of the same form.
Imports Locust (gevent monkey-patching): used by `python -m load`, not by library code.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.event
from locust.env import Environment

from load.config import LoadConfig, StepSpec
from load.health import GoneWatch, client_warnings, data_warnings
from load.metrics import Window, step_metrics
from load.records import RequestRecord
from load.slo import judge
from load.users import ProcessState, bound_user_class, probe_loop_lag

log = logging.getLogger("load")
INTERRUPT_DRAIN_S = 2.0  # after Ctrl-C, how long requests in flight may still finish


class _NoSpawnRateWarning(logging.Filter):
    """Locust warns about spawn rates over 100/s; every step here starts its users at once on purpose
    (within ~50 ms, inside the warm-up), so the warning would only be noise on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "spawn rate is very high" not in record.getMessage()


@dataclass
class StepOutcome:
    """One finished step: its spec, raw records, client health and computed metrics."""

    spec: StepSpec
    records: list[RequestRecord]
    health: list[dict[str, Any]]
    window: Window
    metrics: dict[str, Any] = field(default_factory=dict)
    slo: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    aborted: str | None = None  # why the step (and the run) ended early: the endpoint gone, or Ctrl-C
    interrupted: bool = False  # ended by Ctrl-C (SIGINT): the report is partial
    started_at: float = 0.0  # time.monotonic() when the step began (scraped server metrics align to it)
    stopped_early: str | None = None  # why `early_stop` ended the step before its duration (saturated)


class LocalBackend:
    """All users in this process."""

    workers = 1

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
        self.process.sending = False

    def drained(self) -> bool:
        return self.process.inflight == 0

    def finish(self) -> tuple[list[RequestRecord], list[dict[str, Any]]]:
        health = self.process.health()
        self.runner.stop()
        return list(self.process.records), [health]

    def close(self) -> None:
        self._probe.kill()
        self.runner.quit()


class DistributedBackend:
    """A Locust master here and `workers` worker processes (`python -m load.worker`) on loopback."""

    def __init__(self, config: LoadConfig, workers: int, startup_timeout_s: float = 60.0) -> None:
        from reference_server.launcher import free_port

        self.workers = workers
        # The master runs no users; the class is there for Locust to match the workers' by name.
        self.environment = Environment(user_classes=[bound_user_class(ProcessState())])
        port = free_port()
        self.runner = self.environment.create_master_runner("127.0.0.1", port)
        self.statuses: dict[int, dict[str, Any]] = {}
        self.collected: dict[int, dict[str, Any]] = {}
        self.acks: set[int] = set()
        self.runner.register_message("chatspec_ack", lambda environment, msg, **_: self.acks.add(msg.data["worker"]))
        self.runner.register_message("chatspec_status", self._on_status)
        self.runner.register_message("chatspec_records", self._on_records)
        self.processes = [
            # A session of their own: Ctrl-C in the terminal reaches the master only, which then
            # collects what the workers measured and stops them.
            subprocess.Popen([sys.executable, "-m", "load.worker", "--master-port", str(port),
                              "--workers", str(workers)], start_new_session=True)
            for _ in range(workers)
        ]
        try:
            self._wait(lambda: self.runner.worker_count >= workers, startup_timeout_s, "workers to connect")
            self.runner.send_message("chatspec_config", config.to_wire())
            self._wait(lambda: len(self.acks) >= workers, startup_timeout_s, "workers to take the settings")
        except BaseException:
            self.close()
            raise

    def _on_status(self, environment: Environment, msg: Any, **_kw: Any) -> None:
        self.statuses[msg.data["worker"]] = msg.data

    def _on_records(self, environment: Environment, msg: Any, **_kw: Any) -> None:
        self.collected[msg.data["worker"]] = msg.data

    def _wait(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            dead = [p.returncode for p in self.processes if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a load worker exited (code {dead[0]}) while waiting for {what}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"gave up waiting {timeout_s:.0f} s for {what}")
            gevent.sleep(0.05)

    def start_step(self, step: StepSpec) -> None:
        self.statuses.clear()
        self.runner.send_message("chatspec_step", step.to_wire())
        self.runner.start(step.users, spawn_rate=max(step.users, 1) * 20, wait=False)

    def status(self) -> list[dict[str, Any]]:
        self.runner.send_message("chatspec_poll")
        gevent.sleep(0.05)
        return list(self.statuses.values())

    def stop_sending(self) -> None:
        self.runner.send_message("chatspec_stop")

    def drained(self) -> bool:
        """Every worker has answered since it stopped sending, with nothing in flight."""
        fresh = [s for s in self.status() if not s["sending"]]
        return len(fresh) >= self.workers and all(s["inflight"] == 0 for s in fresh)

    def finish(self) -> tuple[list[RequestRecord], list[dict[str, Any]]]:
        self.collected.clear()
        self.runner.send_message("chatspec_collect")
        self._wait(lambda: len(self.collected) >= self.workers, 60.0, "workers' records")
        self.runner.stop()
        records = [RequestRecord.from_wire(r) for data in self.collected.values() for r in data["records"]]
        return records, [data["health"] for data in sorted(self.collected.values(), key=lambda d: d["worker"])]

    def close(self) -> None:
        try:
            self.runner.quit()
        finally:
            for process in self.processes:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _progress_line(step: StepSpec, total_steps: int, elapsed: float, statuses: list[dict[str, Any]],
                   tokens_per_s: float) -> str:
    sent = sum(s["sent"] for s in statuses)
    done = sum(s["done"] for s in statuses)
    failed = sum(s["failed"] for s in statuses)
    inflight = sum(s["inflight"] for s in statuses)
    of = f"/{total_steps}" if total_steps else ""  # a capacity search does not know its count
    return (f"[step {step.index + 1}{of} {step.label}] {elapsed:5.1f}/{step.duration_s:g} s  "
            f"sent {sent}  done {done}  failed {failed}  in flight {inflight}  output tok/s {tokens_per_s:,.0f}")


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
    """Run one step to its duration or request count, let in-flight requests finish, measure.

    The step ends early, its outcome marked `aborted`, when the endpoint stops answering, or when
    `interrupt` is set (Ctrl-C: then also `interrupted`; requests in flight get INTERRUPT_DRAIN_S).
    `early_stop(step, elapsed s, statuses)`, asked at every poll, may end it sooner with a reason
    (a capacity search stops a clearly saturated step), then marked `stopped_early`.
    """
    interrupt = interrupt or gevent.event.Event()
    start = time.monotonic()
    backend.start_step(step)
    last_tokens, last_time = 0, start
    count_reached = False
    watch = GoneWatch(start, server_exit)
    aborted, interrupted, stopped_early = None, False, None
    while (elapsed := time.monotonic() - start) < step.duration_s:
        if interrupt.wait(min(1.0, step.duration_s - elapsed)):
            interrupted = True
            aborted = f"interrupted (Ctrl-C) in step {step.label} after {time.monotonic() - start:.1f} s"
            drain_s = min(drain_s, INTERRUPT_DRAIN_S)
            break
        statuses = backend.status()
        now = time.monotonic()
        tokens = sum(s["tokens"] for s in statuses)
        if progress:
            rate = (tokens - last_tokens) / max(now - last_time, 1e-9)
            progress(_progress_line(step, total_steps, now - start, statuses, rate))
        last_tokens, last_time = tokens, now
        gone = watch.update(statuses, now)
        if gone is not None:
            aborted = f"the endpoint stopped answering in step {step.label} after {now - start:.1f} s: {gone}"
            break
        if early_stop is not None and (stopped_early := early_stop(step, now - start, statuses)) is not None:
            break
        if step.max_requests is not None and sum(s["sent"] for s in statuses) >= step.max_requests:
            if sum(s["inflight"] for s in statuses) == 0:
                count_reached = True
                break
    stop_ns = int((time.monotonic() - start) * 1e9)
    backend.stop_sending()
    deadline = time.monotonic() + drain_s
    while time.monotonic() < deadline and not backend.drained():
        gevent.sleep(0.05)
    records, health = backend.finish()
    end_ns = stop_ns
    if count_reached:  # the window ends with the last reply, not when the poll noticed it
        end_ns = max((r.end_ns for r in records if r.end_ns is not None), default=stop_ns)
    window = Window(int(step.warmup_s * 1e9), max(end_ns, int(step.warmup_s * 1e9) + 1))
    metrics = step_metrics(records, window, slo)
    metrics["requests_total"] = len(records)
    metrics["requests_refused"] = sum(1 for r in records if r.connection_refused)  # warm-up included
    outcome = StepOutcome(step, records, health, window, metrics, judge(metrics, slo), aborted=aborted,
                          interrupted=interrupted, started_at=start, stopped_early=stopped_early)
    outcome.warnings = client_warnings(metrics, health, step) + data_warnings(metrics)
    return outcome


def run_load(
    config: LoadConfig,
    steps: list[StepSpec],
    *,
    workers: int = 1,
    slo: dict[str, float] | None = None,
    progress: Callable[[str], None] | None = None,
    server_exit: Callable[[], str | None] | None = None,
    plan: Callable[[list[StepOutcome]], StepSpec | None] | None = None,
    early_stop: Callable[[StepSpec, float, list[dict[str, Any]]], str | None] | None = None,
) -> list[StepOutcome]:
    """Every step in order against one backend; the backend is closed whatever happens.

    A step that finds the endpoint gone ends the run: later steps are not started.
    `server_exit` says how a server this run started has ended (None while it runs).
    With `plan`, the steps come from it instead, one at a time from the outcomes so far, until it
    gives None (a capacity search); `steps` then only sizes the progress lines.
    """
    logging.getLogger("locust").setLevel(logging.WARNING)
    logging.getLogger("locust.runners").addFilter(_NoSpawnRateWarning())
    backend: LocalBackend | DistributedBackend
    backend = DistributedBackend(config, workers) if workers > 1 else LocalBackend(config)
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
