"""The Locust user that sends chat requests and times every token, and the process it belongs to.

One request, top to bottom: `ChatUser.chat` asks its workload session for the next planned request
(load.workloads), waits for its turn (closed loop, or its slot in the arrival schedule), `send`s it
and times every byte into a RequestRecord (load.records) that carries what the plan asked for; the
record joins its process's records, and the answer goes back to the session (multi-turn carries it
into the next turn). Each process (the only one, or a worker) owns one `ProcessState`
(load.process: its turns and counts), and its user class is bound to it by `bound_user_class`: no
module-level state.

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
from typing import Any, ClassVar

import gevent
from geventhttpclient.url import URL
from locust import FastHttpUser, constant, task

from load.config import MAX_RETRY_AFTER_S
from load.process import ProcessState
from load.records import RequestRecord, StreamTimer, read_json_body
from load.workloads import PlannedRequest, Session, request_body

LAG_PROBE_S = 0.005  # how often the event-loop probe wakes up


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

    def on_start(self) -> None:
        """Open this user's connection before its first turn, so that a request's bytes go out when
        its time comes. Measured against the mock's --record: a request that had to open its
        connection first (a name lookup through gevent's resolver thread, the TCP handshake, the
        server's new handler) reached the server up to ~200 ms after it was stamped as sent on a busy
        2-core machine, against ~30 ms on an open one; in open loop most users' first request is such
        a request. Uses geventhttpclient's connection pool (a private attribute): if its shape
        changes, the connection is opened by the first request, as before."""
        try:
            client = self.client.client.clientpool.get_client(URL(self.host + "/"))
            pool = client._connection_pool
            pool.return_socket(pool.get_socket())
        except Exception:  # an endpoint that refuses shows on the first request, as its error
            pass

    @task
    def chat(self) -> None:
        process = self.process
        think = self.session.wait_s()
        if think > 0:
            gevent.sleep(think)
        if process.schedule is None and (before := -process.now_ns()) > 0:
            gevent.sleep(before / 1e9)  # closed loop: the step's time 0 (open-loop slots wait for their time)
        turn = process.claim()
        if turn is None:  # no more turns in this step for this process
            gevent.sleep(0.05)
            return
        intended, slot = turn
        # The request is made before its time comes, so that at its time only its bytes go out (a
        # trace's prompt text, the JSON: about a millisecond each, which a burst of slots would add up).
        planned = self.session.next_request(slot)
        body = self.body(planned)
        if intended is not None:
            delay = (intended - process.now_ns()) / 1e9
            if delay > 0:
                gevent.sleep(delay)
            process.waiting.remove(intended)
        if process.stopped:  # scheduled, never sent: the step was stopped (Ctrl-C, endpoint gone)
            return
        record, answer = self.send(planned, body, intended)
        self.session.answered(answer if record.ok else None)
        if (record.status == 429 and process.schedule is None
                and process.config is not None and process.config.honor_retry_after):
            gevent.sleep(retry_after_seconds(record.retry_after))

    def body(self, planned: PlannedRequest) -> tuple[dict[str, Any], bytes]:
        """The request's JSON body, as data and as the bytes that go out."""
        config = self.process.config
        assert config is not None
        body = request_body(planned, model=config.model, stream=config.stream, extra_body=config.extra_body)
        return body, json.dumps(body).encode()

    def send(self, planned: PlannedRequest, prepared: tuple[dict[str, Any], bytes],
             intended_ns: int | None) -> tuple[RequestRecord, str | None]:
        """One request (its body `prepared` by `body`), timed end to end; its record goes to the
        process's records. Returns the record and the answer's text (choice 0; None when there is none)."""
        process = self.process
        body, payload = prepared
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
            process.add_record(record)
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
