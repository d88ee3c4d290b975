"""What one load process (the only one, or a worker) is doing in the current step: its share of
the count and the schedule, the turns its users take, and the counts kept apart (load.fidelity).

Free of Locust and gevent, so the turn-taking rules can be tested without monkey-patching; the
users (load.users) are bound to one ProcessState each.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from load.arrivals import intended_offsets_s
from load.config import LoadConfig, StepSpec, share
from load.fidelity import ProcessCounts
from load.records import RequestRecord
from load.workloads import Session, Workload, from_wire

RECENT = 200  # how many of the latest records a status carries TTFTs of
LATE_CLAIM_NS = 1_000_000  # an open-loop slot taken this long after its time found every user busy


def lead_s(users: int, workers: int) -> float:
    """How long after a step begins its time 0 comes: its users are spawned and have opened their
    connections by then (measured: tens of ms for 256 users), so the first slots of a schedule go
    out on time. The same lead in every process, each from when it got the step, keeps the
    workers' schedules together (starting each clock at its own first turn put one worker's
    requests ~50 ms behind the other's)."""
    return 0.2 + 0.001 * math.ceil(users / max(workers, 1))


@dataclass
class ProcessState:
    """What this process is doing in the current step (one per process: master or worker).

    Three counts are kept apart (load.fidelity): `scheduled` turns (a closed-loop user's turn, or an
    open-loop slot a user took), `sent` requests (their bytes went out) and `done` ones (records).
    The process itself decides when it takes no more turns (`ended_by`), by its own clock: its share
    of the request count is used up, its schedule has no more slots, or the step's duration passed.
    """

    config: LoadConfig | None = None
    step: StepSpec | None = None
    worker_index: int = 0
    workers: int = 1
    origin_ns: int = 0  # the step's time 0 (perf_counter_ns): a lead after the step began, see lead_s
    began_ns: int = 0  # when this process got the step (its CPU use is measured from then)
    deadline_ns: int = 0  # the step's duration, from origin_ns: no turn is taken at or after it
    stopped: bool = False  # told to stop (Ctrl-C, endpoint gone, early stop, the step's end): no more sends
    stopped_ns: int | None = None
    quota: int | None = None
    scheduled: int = 0
    sent: int = 0
    inflight: int = 0
    late_claims: int = 0
    ended_by: str | None = None
    records: list[RequestRecord] = field(default_factory=list)  # every ended request, by add_record
    # Running totals over `records`, so a status poll costs nothing however long the step
    failed: int = 0
    tokens: int = 0
    refused: int = 0
    loop_lag_ns: list[int] = field(default_factory=list)
    cpu_start_s: float = 0.0
    workload: Workload | None = None
    # (intended send time in ns, the workload's slot or None) of each request, in open loop
    schedule: Iterator[tuple[int, int | None]] | None = None
    next_slot: tuple[int, int | None] | None = None  # taken from `schedule`, not yet claimed
    waiting: list[int] = field(default_factory=list)  # intended times of slots taken, not yet sent
    headers: dict[str, str] = field(default_factory=dict)
    sessions: int = 0  # sessions made so far in this step (seeds each user's own)
    _missed: int | None = None

    def configure(self, config: LoadConfig, worker_index: int = 0, workers: int = 1) -> None:
        """Take the run's settings (once per run)."""
        self.config, self.worker_index, self.workers = config, worker_index, workers
        self.workload = from_wire(config.workload)
        self.headers = {"Content-Type": "application/json", "Accept-Encoding": "identity",
                        "Accept": "text/event-stream" if config.stream else "application/json"}
        if config.api_key:
            self.headers["Authorization"] = f"Bearer {config.api_key}"
        self.headers.update(config.headers)

    def begin_step(self, step: StepSpec) -> None:
        """Start a step now: fresh counts and records, this process's share of the count and the rate."""
        assert self.config is not None and self.workload is not None, "configure() first"
        self.step = step
        self.records, self.loop_lag_ns = [], []
        self.scheduled = self.sent = self.inflight = self.sessions = self.late_claims = 0
        self.failed = self.tokens = self.refused = 0
        self.ended_by, self.stopped, self.stopped_ns, self.next_slot, self._missed = None, False, None, None, None
        self.waiting = []
        self.quota = None if step.max_requests is None else share(step.max_requests, self.workers, self.worker_index)
        self.schedule = self.workload.schedule(self.worker_index, self.workers)
        if self.schedule is None and step.rate is not None:
            offsets = intended_offsets_s(step.rate / self.workers, step.arrival, gamma_shape=self.config.gamma_shape,
                                         seed=self.config.seed * 1000 + step.index * 37 + self.worker_index)
            # Constant arrivals over W workers interleave (worker i starts i/rate in), so that together
            # they are evenly spaced rather than W requests at once every W/rate seconds.
            shift = self.worker_index / step.rate if step.arrival == "constant" else 0.0
            self.schedule = ((int((s + shift) * 1e9), None) for s in offsets)
        self.deadline_ns = int(step.duration_s * 1e9) if math.isfinite(step.duration_s) else 2**62
        self.cpu_start_s, self.began_ns = time.process_time(), time.perf_counter_ns()
        self.origin_ns = self.began_ns + int(lead_s(step.users, self.workers) * 1e9)

    def now_ns(self) -> int:
        return time.perf_counter_ns() - self.origin_ns

    def new_session(self) -> Session:
        """A fresh workload session for a user starting now, with its own reproducible random stream."""
        assert self.config is not None and self.workload is not None and self.step is not None
        self.sessions += 1
        seed = f"{self.config.seed}/{self.step.index}/{self.worker_index}/{self.sessions}"
        return self.workload.session(random.Random(seed))

    def add_record(self, record: RequestRecord) -> None:
        """An ended request (answered or failed): it is `done`."""
        self.records.append(record)
        if record.ok:
            self.tokens += record.output_tokens
        else:
            self.failed += 1
        self.refused += record.connection_refused

    def stop(self) -> None:
        """No more turns and no more sends in this step (requests in flight still finish)."""
        if not self.stopped:
            self.stopped, self.stopped_ns = True, self.now_ns()

    def _peek(self) -> tuple[int, int | None] | None:
        if self.next_slot is None and self.schedule is not None:
            self.next_slot = next(self.schedule, None)
        return self.next_slot

    def _update_end(self) -> None:
        """Set `ended_by` once this process can take no more turns."""
        if self.ended_by is not None or self.step is None:
            return
        if self.quota is not None and self.scheduled >= self.quota:
            self.ended_by = "count"
        elif self.schedule is not None and self._peek() is None:
            self.ended_by = "schedule"
        elif self.now_ns() >= self.deadline_ns:
            self.ended_by = "duration"
        elif self.schedule is not None and (due := self._peek()) is not None and due[0] >= self.deadline_ns:
            self.ended_by = "duration"  # the next slot comes after the step's end, and so do the rest

    def claim(self) -> tuple[int | None, int | None] | None:
        """The next turn, counted as scheduled: (intended send time in ns, the workload's slot) in open
        loop, (None, None) in closed loop; None when this process takes no more turns."""
        self._update_end()
        if self.stopped or self.ended_by is not None:
            return None
        self.scheduled += 1
        if self.schedule is None:
            return None, None
        due = self.next_slot
        assert due is not None  # _update_end peeked it
        self.next_slot = None
        if self.now_ns() - due[0] > LATE_CLAIM_NS:
            self.late_claims += 1
        self.waiting.append(due[0])
        return due

    def due(self) -> int:
        """Turns that have come due so far: taken, and (open loop) their time has come (or they were
        sent), plus those missed. A slot taken ahead of its time is not yet due."""
        now = self.now_ns() if self.stopped_ns is None else self.stopped_ns
        return self.scheduled - sum(1 for t in self.waiting if t > now) + (self._missed or 0)

    def missed(self) -> int:
        """Open-loop slots that came due before the step's end (or its stop) and no user took; counted
        once this process takes no more turns."""
        if self._missed is not None:
            return self._missed
        self._update_end()
        if self.schedule is None or (self.ended_by is None and not self.stopped):
            return 0
        until = self.deadline_ns if self.stopped_ns is None else min(self.deadline_ns, self.stopped_ns)
        missed = 0
        room = None if self.quota is None else self.quota - self.scheduled
        while (room is None or missed < room) and (due := self._peek()) is not None and due[0] < until:
            missed += 1
            self.next_slot = None
        self._missed = missed
        return missed

    def finished(self) -> bool:
        """No more turns, none waiting for its time, nothing in flight."""
        self._update_end()
        return (self.stopped or self.ended_by is not None) and self.inflight == 0 and (
            self.stopped or self.sent >= self.scheduled)

    def counts(self) -> ProcessCounts:
        missed = self.missed()
        return ProcessCounts(worker=self.worker_index, scheduled=self.due() - missed, missed=missed, sent=self.sent,
                             done=len(self.records), late_claims=self.late_claims, ended_by=self.ended_by)

    def health(self) -> dict[str, Any]:
        """This process's CPU use (fraction of one core) and event-loop lag samples so far."""
        wall = max((time.perf_counter_ns() - self.began_ns) / 1e9, 1e-9)
        return {"worker": self.worker_index, "cpu_fraction": (time.process_time() - self.cpu_start_s) / wall,
                "loop_lag_ns": list(self.loop_lag_ns)}

    def status(self) -> dict[str, Any]:
        return {"worker": self.worker_index, "step": None if self.step is None else self.step.index,
                "scheduled": self.due(), "sent": self.sent, "inflight": self.inflight,
                "done": len(self.records), "failed": self.failed, "tokens": self.tokens, "finished": self.finished(),
                "ended_by": self.ended_by, "stopped": self.stopped, "refused": self.refused,
                # the latest answers' TTFTs, for a capacity search to see a step's queue growing
                "ttft_ms_recent": [(r.first_token_ns - r.send_ns) / 1e6 for r in self.records[-RECENT:]
                                   if r.first_token_ns is not None]}
