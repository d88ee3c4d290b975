"""The Locust user that sends chat requests and times every token, and the per-process state.

Importing this module imports Locust, which monkey-patches the process for gevent: only the
load runner, its workers and `locustfile.py` import it.

Why the raw socket response: Locust's `iter_content`/`iter_lines` read fixed 1 KiB blocks, so
a token event waits until a kilobyte has arrived and every timestamp comes late. Here the body is
read with geventhttpclient's `readline`, which returns as soon as a line is in the buffer and
otherwise takes whatever one `recv` brings; each line is stamped when it is handed over.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import gevent
from locust import FastHttpUser, constant, task

from load.arrivals import intended_offsets_s
from load.config import MAX_RETRY_AFTER_S, LoadConfig, StepSpec, share
from load.prompts import PromptPlan, body_source
from load.records import RequestRecord, StreamTimer, read_json_body

LAG_PROBE_S = 0.005  # how often the event-loop probe wakes up


@dataclass
class ProcessState:
    """What this process is doing in the current step (one per process: master or worker)."""

    config: LoadConfig | None = None
    step: StepSpec | None = None
    worker_index: int = 0
    workers: int = 1
    origin_ns: int = 0
    sending: bool = False
    quota: int | None = None
    sent: int = 0
    inflight: int = 0
    records: list[RequestRecord] = field(default_factory=list)
    loop_lag_ns: list[int] = field(default_factory=list)
    cpu_start_s: float = 0.0
    bodies: Iterator[dict[str, Any]] | None = None
    schedule: Iterator[float] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def configure(self, config: LoadConfig, worker_index: int = 0, workers: int = 1) -> None:
        """Take the run's settings (once per run)."""
        self.config, self.worker_index, self.workers = config, worker_index, workers
        ChatUser.host = config.base_url
        ChatUser.network_timeout = config.timeout_s
        ChatUser.connection_timeout = min(config.timeout_s, 30.0)
        self.headers = {"Content-Type": "application/json", "Accept-Encoding": "identity",
                        "Accept": "text/event-stream" if config.stream else "application/json"}
        if config.api_key:
            self.headers["Authorization"] = f"Bearer {config.api_key}"
        self.headers.update(config.headers)
        plan = None if config.dataset else PromptPlan(config.prompt_words)
        self.bodies = body_source(model=config.model, stream=config.stream, output_tokens=config.output_tokens,
                                  plan=plan, dataset=config.dataset, extra_body=config.extra_body,
                                  seed=config.seed * 1000 + worker_index)

    def begin_step(self, step: StepSpec) -> None:
        """Start a step now: fresh records, this process's share of the count and the rate."""
        assert self.config is not None, "configure() first"
        self.step = step
        self.records, self.loop_lag_ns = [], []
        self.sent, self.inflight = 0, 0
        self.quota = None if step.max_requests is None else share(step.max_requests, self.workers, self.worker_index)
        self.schedule = None
        if step.rate is not None:
            offsets = intended_offsets_s(step.rate / self.workers, step.arrival, gamma_shape=self.config.gamma_shape,
                                         seed=self.config.seed * 1000 + step.index * 37 + self.worker_index)
            self.schedule = (int(s * 1e9) for s in offsets)
        self.cpu_start_s = time.process_time()
        self.origin_ns = time.perf_counter_ns()
        self.sending = True

    def now_ns(self) -> int:
        return time.perf_counter_ns() - self.origin_ns

    def health(self) -> dict[str, Any]:
        """This process's CPU use (fraction of one core) and event-loop lag samples so far."""
        wall = max(self.now_ns() / 1e9, 1e-9)
        return {"worker": self.worker_index, "cpu_fraction": (time.process_time() - self.cpu_start_s) / wall,
                "loop_lag_ns": list(self.loop_lag_ns)}

    def status(self) -> dict[str, Any]:
        return {"worker": self.worker_index, "sent": self.sent, "inflight": self.inflight,
                "done": len(self.records), "failed": sum(1 for r in self.records if not r.ok),
                "tokens": sum(r.output_tokens for r in self.records if r.ok), "sending": self.sending,
                "refused": sum(1 for r in self.records if r.connection_refused)}


STATE = ProcessState()


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


def probe_loop_lag() -> None:
    """Forever: sleep LAG_PROBE_S and record how late the wake-up came (the client's own delay)."""
    while True:
        before = time.perf_counter_ns()
        gevent.sleep(LAG_PROBE_S)
        if STATE.sending:
            STATE.loop_lag_ns.append(max(0, time.perf_counter_ns() - before - int(LAG_PROBE_S * 1e9)))


class ChatUser(FastHttpUser):
    """Sends one chat request after another (closed loop), or at its turn in the arrival schedule."""

    wait_time = constant(0)
    host = "http://127.0.0.1"
    network_timeout = 120.0
    connection_timeout = 30.0

    @task
    def chat(self) -> None:
        state = STATE
        if not state.sending or state.step is None or state.bodies is None:
            gevent.sleep(0.02)
            return
        if state.quota is not None and state.sent >= state.quota:
            gevent.sleep(0.02)
            return
        state.sent += 1
        intended = None
        if state.schedule is not None:
            intended = next(state.schedule)
            delay = (intended - state.now_ns()) / 1e9
            if delay > 0:
                gevent.sleep(delay)
            if not state.sending:
                state.sent -= 1
                return
        self.send(next(state.bodies), intended)
        record = state.records[-1] if state.records else None
        if (record is not None and record.status == 429 and state.schedule is None
                and state.config is not None and state.config.honor_retry_after):
            gevent.sleep(retry_after_seconds(record.retry_after))

    def send(self, body: dict[str, Any], intended_ns: int | None) -> None:
        """One request, timed end to end; its record goes to STATE.records."""
        state = STATE
        assert state.config is not None
        payload = json.dumps(body).encode()
        stream = bool(body.get("stream"))
        state.inflight += 1
        record = RequestRecord(send_ns=state.now_ns(), stream=stream, intended_ns=intended_ns,
                               worker=state.worker_index)
        try:
            self._attempt(payload, record)
            if record.stale_connection:
                # The connection closed before any byte of the answer: a keep-alive connection the
                # server had already closed (llama-server does so without `Connection: close`), not
                # a server error. Once more, on a fresh connection; latencies still count from the
                # first attempt, as the user waited through both.
                record.retried = True
                record.error = record.error_kind = None
                self._attempt(payload, record)
        except Exception as exc:  # a transport error must become a record, never kill the user
            record.fail(transport_kind(exc), f"{type(exc).__name__}: {exc}")
            record.end_ns = record.end_ns or state.now_ns()
        finally:
            state.inflight -= 1
            state.records.append(record)
        if record.first_token_ns is not None and record.ok:
            self.environment.events.request.fire(
                request_type="TTFT", name="first token", response_time=(record.first_token_ns - record.send_ns) / 1e6,
                response_length=0, exception=None, context={})

    def _attempt(self, payload: bytes, record: RequestRecord) -> None:
        """Send the request once and read the answer into `record`."""
        state = STATE
        assert state.config is not None
        with self.client.request("POST", state.config.path, data=payload, headers=state.headers,
                                 stream=True, catch_response=True,
                                 name="chat stream" if record.stream else "chat") as response:
            self._read(response, record)
            if record.end_ns is not None:
                response.request_meta["response_time"] = (record.end_ns - record.send_ns) / 1e6
            if record.ok:
                response.success()
            else:
                response.failure(record.error or f"HTTP {record.status}")

    def _read(self, response: Any, record: RequestRecord) -> None:
        state = STATE
        record.first_byte_ns = state.now_ns()
        record.status = response.status_code or None
        raw = getattr(response, "_response", None)
        if raw is None or not record.status:
            error = getattr(response, "error", None)
            record.fail(transport_kind(error) if error is not None else "connection_closed",
                        f"no response: {error or 'connection failed'}")
            record.end_ns = state.now_ns()
            return
        content_type = (response.headers or {}).get("content-type", "")
        if record.status == 429:
            record.retry_after = (response.headers or {}).get("retry-after")
        if record.status == 200 and record.stream and content_type.startswith("text/event-stream"):
            timer = StreamTimer(record)
            while True:
                line = raw.readline(b"\n")
                now = state.now_ns()
                if not line:
                    timer.close(now)
                    return
                timer.feed(line, now)
        if record.status == 200 and record.stream:
            record.fail("protocol", f"expected text/event-stream, got {content_type or 'no Content-Type'}")
        body = raw.read()
        if not body and record.status != 200:  # Locust read an error answer's body already
            body = getattr(response, "content", None) or b""
        read_json_body(record, body, state.now_ns())
