"""Driving generator replicas: one loop per generator, in a thread or in a process of its own.

A backend (the exllamav2 dynamic generator, or a fake one in tests) steps all its jobs at once;
`GeneratorLoop` feeds it submitted jobs and cancellations between steps and hands every event
to a sink. `ThreadReplica` runs one loop on a thread of this process (a paged generator batches
many jobs by itself); `ProcessReplica` runs it in a spawned process, so that several unpaged
generators (batch size 1 each) can overlap on one GPU without sharing a GIL. `ReplicaPool`
sends each job to the replica with the fewest jobs. Nothing here imports torch or exllamav2.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import queue
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from reference_server.engines.exllamav2_plan import JobPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenOut:
    """A generated token as it leaves a backend: id, and logprobs when they were asked for."""

    token_id: int
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class JobEvent:
    """Tokens of one job since its last event; `done` on the last one, `error` if it failed."""

    job_id: int
    tokens: tuple[TokenOut, ...] = ()
    done: bool = False
    error: str | None = None


class Backend(Protocol):
    """A generator that advances all its jobs one step at a time (not thread-safe: one loop owns it)."""

    def enqueue(self, job_id: int, plan: JobPlan) -> None: ...

    def cancel(self, job_id: int) -> None: ...

    def active_ids(self) -> list[int]: ...

    def step(self) -> list[JobEvent]: ...

    def close(self) -> None: ...


Sink = Callable[[JobEvent], None]
_STOP = ("stop",)


class GeneratorLoop:
    """Owns one backend: applies commands between steps, steps while there is work, sleeps when idle."""

    def __init__(self, backend: Backend, sink: Sink, commands: Any) -> None:
        self.backend = backend
        self.sink = sink
        self.commands = commands  # queue.Queue or multiprocessing Queue of command tuples

    def _apply(self, command: tuple[Any, ...]) -> bool:
        kind = command[0]
        if kind == "stop":
            return False
        if kind == "submit":
            _, job_id, plan = command
            try:
                self.backend.enqueue(job_id, plan)
            except Exception as exc:  # a job the backend refuses fails alone
                self.sink(JobEvent(job_id, done=True, error=f"{type(exc).__name__}: {exc}"))
        elif kind == "cancel":
            self.backend.cancel(command[1])
        return True

    def run(self) -> None:
        """Serve until a stop command."""
        while True:
            idle = not self.backend.active_ids()
            try:
                command = self.commands.get() if idle else self.commands.get_nowait()
                while True:
                    if not self._apply(command):
                        self.backend.close()
                        return
                    command = self.commands.get_nowait()
            except queue.Empty:
                pass
            if not self.backend.active_ids():
                continue
            try:
                events = self.backend.step()
            except Exception as exc:  # every job in flight fails; the loop goes on for new ones
                log.exception("generator step failed")
                message = f"{type(exc).__name__}: {exc}"
                for job_id in self.backend.active_ids():
                    self.backend.cancel(job_id)
                    self.sink(JobEvent(job_id, done=True, error=message))
                continue
            for event in events:
                self.sink(event)


class ThreadReplica:
    """One generator loop on a thread of this process; the backend is built on that thread."""

    def __init__(self, factory: Callable[[], Backend], sink: Sink, name: str = "replica-0") -> None:
        self._commands: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._ready = threading.Event()
        self._failure: str | None = None

        def main() -> None:
            try:
                backend = factory()
            except BaseException as exc:
                self._failure = f"{type(exc).__name__}: {exc}"
                self._ready.set()
                return
            self._ready.set()
            GeneratorLoop(backend, sink, self._commands).run()

        self._thread = threading.Thread(target=main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise RuntimeError(self._failure)

    def submit(self, job_id: int, plan: JobPlan) -> None:
        self._commands.put(("submit", job_id, plan))

    def cancel(self, job_id: int) -> None:
        self._commands.put(("cancel", job_id))

    def close(self) -> None:
        self._commands.put(_STOP)
        self._thread.join(timeout=30)


def _process_main(factory: Callable[[], Backend], commands: Any, events: Any) -> None:
    """A replica process: build the backend, report ready (or why not), then serve."""
    try:
        backend = factory()
    except BaseException as exc:
        events.put(("failed", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        return
    events.put(("ready",))
    try:
        GeneratorLoop(backend, events.put, commands).run()
    finally:
        events.put(("closed",))


class ProcessReplica:
    """One generator loop in a spawned process (CUDA needs spawn, not fork)."""

    def __init__(self, factory: Callable[[], Backend], sink: Sink, name: str = "replica") -> None:
        context = multiprocessing.get_context("spawn")
        self._commands = context.Queue()
        self._events = context.Queue()
        self._process = context.Process(target=_process_main, args=(factory, self._commands, self._events),
                                         name=name, daemon=True)
        self._process.start()
        first = self._events.get()
        if first[0] != "ready":
            self._process.join(timeout=10)
            log.debug("replica %s failed:\n%s", name, first[2] if len(first) > 2 else "")
            raise RuntimeError(first[1])
        self._reader = threading.Thread(target=self._read, args=(sink,), name=f"{name}-events", daemon=True)
        self._reader.start()

    def _read(self, sink: Sink) -> None:
        while True:
            try:
                item = self._events.get()
            except (EOFError, OSError):
                return
            if isinstance(item, JobEvent):
                sink(item)
            elif item[0] == "closed":
                return

    def submit(self, job_id: int, plan: JobPlan) -> None:
        self._commands.put(("submit", job_id, plan))

    def cancel(self, job_id: int) -> None:
        self._commands.put(("cancel", job_id))

    def close(self) -> None:
        if self._process.is_alive():
            self._commands.put(_STOP)
            self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=10)
        self._reader.join(timeout=5)


class ReplicaPool:
    """Several replicas behind one submit/cancel: each job goes to the replica with the fewest jobs."""

    def __init__(self, factory: Callable[[], Backend], sink: Sink, *, replicas: int = 1,
                 processes: bool | None = None) -> None:
        if replicas < 1:
            raise ValueError("replicas must be at least 1")
        use_processes = replicas > 1 if processes is None else processes
        kind = ProcessReplica if use_processes else ThreadReplica
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._where: dict[int, int] = {}
        self._load = [0] * replicas
        self._sink = sink
        self.replicas: list[ThreadReplica | ProcessReplica] = []
        try:
            for i in range(replicas):
                self.replicas.append(kind(factory, self._on_event, name=f"replica-{i}"))
        except BaseException:
            self.close()
            raise

    def _on_event(self, event: JobEvent) -> None:
        if event.done:
            self._release(event.job_id)
        self._sink(event)

    def _release(self, job_id: int) -> None:
        with self._lock:
            index = self._where.pop(job_id, None)
            if index is not None:
                self._load[index] -= 1

    def submit(self, plan: JobPlan) -> int:
        """Start a job; returns its id (events for it carry the same id)."""
        with self._lock:
            job_id = next(self._ids)
            index = min(range(len(self._load)), key=self._load.__getitem__)
            self._load[index] += 1
            self._where[job_id] = index
        self.replicas[index].submit(job_id, plan)
        return job_id

    def cancel(self, job_id: int) -> None:
        """Stop a job that may still be running; no more events come for it once the backend drops it."""
        with self._lock:
            index = self._where.get(job_id)
        if index is not None:
            self.replicas[index].cancel(job_id)
            self._release(job_id)

    def loads(self) -> list[int]:
        """Jobs in flight per replica."""
        with self._lock:
            return list(self._load)

    def close(self) -> None:
        for replica in self.replicas:
            replica.close()
