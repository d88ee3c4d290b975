"""The Locust user that sends chat requests and times every token, and the process it belongs to.

One request, top to bottom: `ChatUser.chat` asks its workload session for the next planned request
(load.workloads), waits for its turn (closed loop, or its slot in the arrival schedule), `send`s it
and times every byte into a RequestRecord (load.records) that carries what the plan asked for; the
record joins its process's records, and the answer goes back to the session (multi-turn carries it
into the next turn). Each process (the only one, or a worker) owns one `ProcessState`, and its user
class is bound to it by `bound_user_class`: no module-level state.

Importing this module imports Locust, which monkey-patches the process for gevent: only the
load runner, its workers and `locustfile.py` import it.

Why the raw socket response: Locust's `iter_content`/`iter_lines` read fixed 1 KiB blocks, so
a token event waits until a kilobyte has arrived and every timestamp comes late. Here the body is
read with geventhttpclient's `readline`, which returns as soon as a line is in the buffer and
otherwise takes whatever one `recv` brings; each line is stamped when it is handed over.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gevent
from locust import FastHttpUser, constant, task

from load.arrivals import intended_offsets_s
from load.config import MAX_RETRY_AFTER_S, LoadConfig, StepSpec, share
from load.fidelity import ProcessCounts
from load.records import RequestRecord, StreamTimer, read_json_body
from load.workloads import PlannedRequest, Session, Workload, from_wire, request_body

LAG_PROBE_S = 0.005  # how often the event-loop probe wakes up
RECENT = 200  # how many of the latest records a status carries TTFTs of
LATE_CLAIM_NS = 1_000_000  # an open-loop slot taken this long after its time found every user busy


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
    origin_ns: int = 0
    deadline_ns: int = 0  # the step's duration, from origin_ns: no turn is taken at or after it
    stopped: bool = False  # told to stop (Ctrl-C, endpoint gone, early stop, the step's end): no more sends
    stopped_ns: int | None = None
    quota: int | None = None
    scheduled: int = 0
    sent: int = 0
    inflight: int = 0
    late_claims: int = 0
    ended_by: str | None = None
    records: list[RequestRecord] = field(default_factory=list)
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
        self.ended_by, self.stopped, self.stopped_ns, self.next_slot, self._missed = None, False, None, None, None
        self.waiting = []
        self.quota = None if step.max_requests is None else share(step.max_requests, self.workers, self.worker_index)
        self.schedule = self.workload.schedule(self.worker_index, self.workers)
        if self.schedule is None and step.rate is not None:
            offsets = intended_offsets_s(step.rate / self.workers, step.arrival, gamma_shape=self.config.gamma_shape,
                                         seed=self.config.seed * 1000 + step.index * 37 + self.worker_index)
            self.schedule = ((int(s * 1e9), None) for s in offsets)
        self.deadline_ns = int(step.duration_s * 1e9) if math.isfinite(step.duration_s) else 2**62
        self.cpu_start_s = time.process_time()
        self.origin_ns = time.perf_counter_ns()

    def now_ns(self) -> int:
        return time.perf_counter_ns() - self.origin_ns

    def new_session(self) -> Session:
        """A fresh workload session for a user starting now, with its own reproducible random stream."""
        assert self.config is not None and self.workload is not None and self.step is not None
        self.sessions += 1
        seed = f"{self.config.seed}/{self.step.index}/{self.worker_index}/{self.sessions}"
        return self.workload.session(random.Random(seed))

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
        wall = max(self.now_ns() / 1e9, 1e-9)
        return {"worker": self.worker_index, "cpu_fraction": (time.process_time() - self.cpu_start_s) / wall,
                "loop_lag_ns": list(self.loop_lag_ns)}

    def status(self) -> dict[str, Any]:
        return {"worker": self.worker_index, "step": None if self.step is None else self.step.index,
                "scheduled": self.due(), "sent": self.sent, "inflight": self.inflight,
                "done": len(self.records), "failed": sum(1 for r in self.records if not r.ok),
                "tokens": sum(r.output_tokens for r in self.records if r.ok), "finished": self.finished(),
                "ended_by": self.ended_by, "stopped": self.stopped,
                "refused": sum(1 for r in self.records if r.connection_refused),
                # the latest answers' TTFTs, for a capacity search to see a step's queue growing
                "ttft_ms_recent": [(r.first_token_ns - r.send_ns) / 1e6 for r in self.records[-RECENT:]
                                   if r.first_token_ns is not None]}


def retry_after_seconds(header: str | None) -> float:
    """How long a 429's Retry-After asks to wait (seconds form; 1 s when absent or unreadable), capped."""
    try:
        seconds = float(header) if header is not None else 1.0
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def transport_kind(exc: BaseException) -> str:
    """The error kind of an exception raised while sending or reading (see records.ERROR_KINDS)."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection_refused"
    if isinstance(exc, TimeoutError | gevent.Timeout) or "timed out" in str(exc).lower():
        return "timeout"
    if isinstance(exc, ConnectionError | EOFError) or "closed" in str(exc).lower():
        return "connection_closed"
    return "transport"


def probe_loop_lag(process: ProcessState) -> None:
    """Forever: sleep LAG_PROBE_S and record how late the wake-up came (the client's own delay)."""
    while True:
        before = time.perf_counter_ns()
        gevent.sleep(LAG_PROBE_S)
        if process.step is not None and not process.stopped:
            process.loop_lag_ns.append(max(0, time.perf_counter_ns() - before - int(LAG_PROBE_S * 1e9)))


class ChatUser(FastHttpUser):
    """Sends one chat request after another (closed loop), or at its turn in the arrival schedule.

    Abstract: `bound_user_class` makes the concrete class of one process, bound to its ProcessState.
    """

    abstract = True
    process: ClassVar[ProcessState]
    wait_time = constant(0)

    def __init__(self, environment: Any) -> None:
        config = self.process.config
        if config is None:
            raise RuntimeError("ChatUser started before its process was configured")
        self.host = config.base_url
        self.network_timeout = config.timeout_s
        self.connection_timeout = min(config.timeout_s, 30.0)
        super().__init__(environment)
        self.session: Session = self.process.new_session()

    @task
    def chat(self) -> None:
        process = self.process
        think = self.session.wait_s()
        if think > 0:
            gevent.sleep(think)
        turn = process.claim()
        if turn is None:  # no more turns in this step for this process
            gevent.sleep(0.05)
            return
        intended, slot = turn
        if intended is not None:
            delay = (intended - process.now_ns()) / 1e9
            if delay > 0:
                gevent.sleep(delay)
        if intended is not None:
            process.waiting.remove(intended)
        if process.stopped:  # scheduled, never sent: the step was stopped (Ctrl-C, endpoint gone)
            return
        planned = self.session.next_request(slot)
        record, answer = self.send(planned, intended)
        self.session.answered(answer if record.ok else None)
        if (record.status == 429 and process.schedule is None
                and process.config is not None and process.config.honor_retry_after):
            gevent.sleep(retry_after_seconds(record.retry_after))

    def send(self, planned: PlannedRequest, intended_ns: int | None) -> tuple[RequestRecord, str | None]:
        """One request, timed end to end; its record goes to the process's records. Returns the
        record and the answer's text (choice 0; None when there is none)."""
        process = self.process
        config = process.config
        assert config is not None
        body = request_body(planned, model=config.model, stream=config.stream, extra_body=config.extra_body)
        payload = json.dumps(body).encode()
        stream = bool(body.get("stream"))
        process.sent += 1  # counted here, as its bytes go out: never when a slot is merely taken
        process.inflight += 1
        record = RequestRecord(send_ns=process.now_ns(), stream=stream, intended_ns=intended_ns,
                               worker=process.worker_index, max_tokens=body.get("max_tokens"),
                               requested_prompt_tokens=planned.requested_prompt_tokens,
                               prefix_blocks=[list(block) for block in planned.prefix_blocks], turn=planned.turn)
        answer = None
        try:
            answer = self._attempt(payload, record)
            if record.stale_connection:
                # The connection closed before any byte of the answer: a keep-alive connection the
                # server had already closed (llama-server does so without `Connection: close`), not
                # a server error. Once more, on a fresh connection; latencies still count from the
                # first attempt, as the user waited through both.
                record.retried = True
                record.error = record.error_kind = None
                answer = self._attempt(payload, record)
        except Exception as exc:  # a transport error must become a record, never kill the user
            record.fail(transport_kind(exc), f"{type(exc).__name__}: {exc}")
            record.end_ns = record.end_ns or process.now_ns()
        except gevent.GreenletExit:  # the step ended with this request still open (its drain ran out)
            record.fail("cut_off", "still in flight when the step ended")
            record.end_ns = record.end_ns or process.now_ns()
            raise
        finally:
            process.inflight -= 1
            process.records.append(record)
        if record.first_token_ns is not None and record.ok:
            self.environment.events.request.fire(
                request_type="TTFT", name="first token", response_time=(record.first_token_ns - record.send_ns) / 1e6,
                response_length=0, exception=None, context={})
        return record, answer

    def _attempt(self, payload: bytes, record: RequestRecord) -> str | None:
        """Send the request once and read the answer into `record`; the answer's text."""
        process = self.process
        assert process.config is not None
        with self.client.request("POST", process.config.path, data=payload, headers=process.headers,
                                 stream=True, catch_response=True,
                                 name="chat stream" if record.stream else "chat") as response:
            answer = self._read(response, record)
            if record.end_ns is not None:
                response.request_meta["response_time"] = (record.end_ns - record.send_ns) / 1e6
            if record.ok:
                response.success()
            else:
                response.failure(record.error or f"HTTP {record.status}")
        return answer

    def _read(self, response: Any, record: RequestRecord) -> str | None:
        process = self.process
        record.first_byte_ns = process.now_ns()
        record.status = response.status_code or None
        raw = getattr(response, "_response", None)
        if raw is None or not record.status:
            error = getattr(response, "error", None)
            record.fail(transport_kind(error) if error is not None else "connection_closed",
                        f"no response: {error or 'connection failed'}")
            record.end_ns = process.now_ns()
            return None
        content_type = (response.headers or {}).get("content-type", "")
        if record.status == 429:
            record.retry_after = (response.headers or {}).get("retry-after")
        if record.status == 200 and record.stream and content_type.startswith("text/event-stream"):
            timer = StreamTimer(record)
            while True:
                line = raw.readline(b"\n")
                now = process.now_ns()
                if not line:
                    timer.close(now)
                    return timer.text
                timer.feed(line, now)
        if record.status == 200 and record.stream:
            record.fail("protocol", f"expected text/event-stream, got {content_type or 'no Content-Type'}")
        body = raw.read()
        if not body and record.status != 200:  # Locust read an error answer's body already
            body = getattr(response, "content", None) or b""
        return read_json_body(record, body, process.now_ns())


def bound_user_class(process: ProcessState) -> type[ChatUser]:
    """The ChatUser class of one process: its users send that process's workload and keep its records."""
    return type("ChatUser", (ChatUser,), {"process": process, "__module__": __name__})
