"""The master side of a run over Locust workers: local processes it starts (`--workers N`), or
workers started elsewhere that connect to it (`--master --expect-workers N`).

Locust's own master carries the users and the heartbeats; the chatspec_* messages carry the rest:
the settings with each worker's index and the worker count (its share of --max-requests and of a
rate), the steps, and every raw record. Records travel with each status answer, so a worker lost
mid-step (Locust's heartbeat marks it missing) loses at most one poll's worth, and what it sent
before is kept. Percentiles are computed from the merged raw records, never from Locust's stats.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent
from locust.env import Environment
from locust.exception import RPCError
from locust.rpc import Message
from locust.runners import HEARTBEAT_LIVENESS, STATE_MISSING, MasterRunner

from load.config import LoadConfig, MasterOptions, StepSpec
from load.fidelity import ProcessCounts
from load.process import ProcessState
from load.records import RequestRecord
from load.users import bound_user_class
from load.version import mismatch

COLLECT_TIMEOUT_S = 60.0  # how long the master waits for a live worker's last records
WAIT_NOTE_S = 10.0  # while waiting for workers, a line this often


class VersionMismatch(RuntimeError):
    """A worker of another chatspec release or protocol tried to join: the run is not made."""


class GatedMaster(MasterRunner):
    """Locust's master, except that once the run has taken its workers (`members`), a worker that
    connects later is acknowledged (so it can say hello and be sent away) but never counted:
    Locust would otherwise rebalance the running users onto it mid-step."""

    def __init__(self, environment: Environment, master_bind_host: str, master_bind_port: int) -> None:
        super().__init__(environment, master_bind_host, master_bind_port)
        self.members: set[str] | None = None  # None: still admitting workers
        self.quit_ids: set[str] = set()  # members that said they quit

    def handle_message(self, client_id: str, msg: Message) -> None:
        if msg.type == "client_ready" and self.members is not None and client_id not in self.members:
            self.send_message("ack", client_id=client_id, data={"index": -1})
            return
        if msg.type == "quit" and self.members is not None and msg.node_id in self.members:
            self.quit_ids.add(msg.node_id)
        super().handle_message(client_id, msg)


@dataclass
class Member:
    """One worker of the run: its index (its share), and what it has reported in this step."""

    client_id: str
    index: int
    name: str  # host and pid, for messages
    records: list[dict[str, Any]] = field(default_factory=list)  # this step's records, wire form
    status: dict[str, Any] | None = None  # its latest status in this step
    lost: str | None = None  # why it is gone
    lost_step: int | None = None


def _name(hello: dict[str, Any]) -> str:
    return f"{hello.get('host', '?')} pid {hello.get('pid', '?')}"


class DistributedBackend:
    """A Locust master here and `workers` load workers: started here on loopback, or (with `remote`)
    waited for on its bind address."""

    def __init__(self, config: LoadConfig, workers: int, remote: MasterOptions | None = None,
                 startup_timeout_s: float = 60.0, say: Callable[[str], None] | None = None) -> None:
        self.workers = workers
        self.spread = "--expect-workers" if remote else "--workers"  # the option that adds processes
        self.step_index: int | None = None
        self.step_label = ""
        self.step_started = 0.0
        self.say = say
        # The master runs no users; the class is there for Locust to match the workers' by name.
        self.environment = Environment(user_classes=[bound_user_class(ProcessState())])
        host, port = (remote.bind_host, remote.bind_port) if remote else ("127.0.0.1", 0)
        try:
            self.runner: GatedMaster = self.environment._create_runner(GatedMaster, master_bind_host=host,
                                                                       master_bind_port=port)
        except (SystemExit, RPCError) as exc:  # Locust exits on a busy port
            raise RuntimeError(f"cannot listen for load workers on {host}:{port} ({exc or 'port in use'})") from None
        self.port: int = self.runner.server.port
        self.runner.master_bind_port = self.port  # a reset of the connection binds the same port
        self.address = f"{host}:{self.port}"
        self.hellos: dict[str, dict[str, Any]] = {}  # accepted, in the order they said hello
        self.members: list[Member] = []
        self.refusal: str | None = None  # a version mismatch before the run started
        self.started_at: float | None = None
        self.acks: dict[str, int] = {}  # client id: the index it took the settings as
        self.collected: dict[int, dict[str, Any]] = {}
        self._notes: list[str] = []
        for kind, handler in (("chatspec_hello", self._on_hello), ("chatspec_ack", self._on_ack),
                              ("chatspec_status", self._on_status), ("chatspec_records", self._on_records)):
            self.runner.register_message(kind, handler)
        self.processes: list[subprocess.Popen[bytes]] = []
        if remote is None:
            # A session of their own: Ctrl-C in the terminal reaches the master only, which then
            # collects what the workers measured and stops them.
            self.processes = [subprocess.Popen([sys.executable, "-m", "load.worker", "--master-host", "127.0.0.1",
                                                "--master-port", str(self.port), "--quiet"],
                                               start_new_session=True)
                              for _ in range(workers)]
        wait_s = startup_timeout_s if remote is None else remote.max_wait_s
        try:
            if remote is not None and say:
                say(f"waiting for {workers} load workers on {self.address} "
                    f"(python -m load.worker --master-host HOST --master-port {self.port})")
            self._gather(config, wait_s, startup_timeout_s)
        except BaseException:
            self.close()
            raise

    # ---- messages from workers ---------------------------------------------------------------

    def _refuse(self, client_id: str, reason: str) -> None:
        self.runner.send_message("chatspec_refused", {"reason": reason}, client_id=client_id)

    def _on_hello(self, environment: Environment, msg: Any, **_kw: Any) -> None:
        hello = msg.data or {}
        problem = mismatch(str(hello.get("version")), int(hello.get("protocol") or 0))
        if problem:
            self._refuse(msg.node_id, problem)
            if self.started_at is None:
                self.refusal = f"refused load worker {_name(hello)}: {problem}"
            else:
                self._notes.append(f"load worker {_name(hello)} connected during the run and was refused: {problem}")
        elif self.started_at is not None and msg.node_id not in {m.client_id for m in self.members}:
            after = time.monotonic() - self.started_at
            self._refuse(msg.node_id, f"the run started {after:.0f} s ago with its {self.workers} workers; a worker "
                                      "cannot join a run under way (start every worker before the run begins)")
            self._notes.append(f"load worker {_name(hello)} connected {after:.1f} s into the run, after it had its "
                               f"{self.workers} workers: sent away, given no share of the load")
        else:
            self.hellos.setdefault(msg.node_id, hello)

    def _on_ack(self, environment: Environment, msg: Any, **_kw: Any) -> None:
        self.acks[msg.node_id] = msg.data["worker"]

    def _member(self, msg: Any) -> Member | None:
        index = msg.data.get("worker")
        if not isinstance(index, int) or not 0 <= index < len(self.members):
            return None
        member = self.members[index]
        return member if member.client_id == msg.node_id and member.lost is None else None

    @staticmethod
    def _take_records(member: Member, first: int, records: list[dict[str, Any]]) -> None:
        """Records arrive in order, each batch from where the last one ended (`first`)."""
        del member.records[first:]
        member.records.extend(records)

    def _on_status(self, environment: Environment, msg: Any, **_kw: Any) -> None:
        member = self._member(msg)
        if member is None or msg.data.get("step") != self.step_index:
            return
        data = dict(msg.data)
        self._take_records(member, data.pop("first"), data.pop("records"))
        member.status = data

    def _on_records(self, environment: Environment, msg: Any, **_kw: Any) -> None:
        member = self._member(msg)
        if member is None or msg.data.get("step") != self.step_index:
            return
        self._take_records(member, msg.data["first"], msg.data["records"])
        self.collected[member.index] = msg.data

    # ---- the run -------------------------------------------------------------------------------

    def _ready(self) -> list[str]:
        """Workers that said hello and are still there (one gone before the run starts is not counted:
        a restarted pod comes back as another)."""
        clients = self.runner.clients
        return [cid for cid in self.hellos if cid in clients and clients[cid].state != STATE_MISSING]

    def _gather(self, config: LoadConfig, wait_s: float, ack_timeout_s: float) -> None:
        """Choose the first `workers` workers ready and give each the settings with its index; one
        that vanishes before it has taken them (a pod restarting) is replaced by the next one ready."""
        while True:
            self._wait(lambda: len(self._ready()) >= self.workers, wait_s, f"{self.workers} workers to connect",
                       note=True)
            chosen = self._ready()[:self.workers]
            for index, client_id in enumerate(chosen):
                self.runner.send_message("chatspec_config", {"config": config.to_wire(), "worker": index,
                                                             "workers": self.workers}, client_id=client_id)

            def configured(chosen: list[str] = chosen) -> bool:
                return all(self.acks.get(cid) == index for index, cid in enumerate(chosen))

            def settled(chosen: list[str] = chosen) -> bool:
                return configured() or any(cid not in self._ready() for cid in chosen)

            self._wait(settled, ack_timeout_s, "workers to take the settings")
            if configured():
                self._admit(chosen)
                return

    def _admit(self, chosen: list[str]) -> None:
        """These are the run's workers, in this order; send away every other connected client."""
        self.members = [Member(cid, index, _name(self.hellos[cid])) for index, cid in enumerate(chosen)]
        self.runner.members = set(chosen)
        self.started_at = time.monotonic()
        for client_id in [cid for cid in self.runner.clients if cid not in self.runner.members]:
            gone = self.runner.clients[client_id].state == STATE_MISSING
            del self.runner.clients[client_id]  # never given users
            if gone:
                continue
            self._refuse(client_id, f"the run took its first {self.workers} workers (--expect-workers) and this "
                                    "one is not needed")
            hello = self.hellos.get(client_id)
            self._notes.append(f"load worker {_name(hello) if hello else client_id} was one more than "
                               f"--expect-workers {self.workers}: sent away, given no share of the load")

    def _check_lost(self) -> None:
        """Mark members Locust has seen quit or miss their heartbeats; keep them out of its dispatch."""
        for member in self.members:
            if member.lost is not None:
                continue
            node = self.runner.clients.get(member.client_id)
            if member.client_id in self.runner.quit_ids:
                why = "quit"
            elif node is not None and node.state == STATE_MISSING:
                why = f"sent no heartbeat for over {HEARTBEAT_LIVENESS} s"
            else:
                continue
            when = f"{time.monotonic() - self.step_started:.1f} s into step {self.step_label}" \
                if self.step_index is not None else "between steps"
            member.lost = (f"load worker {member.index} ({member.name}) was lost {when} (it {why}); the "
                           f"{len(member.records)} records it reported before are kept")
            member.lost_step = self.step_index
            if node is not None:
                del self.runner.clients[member.client_id]  # Locust would re-dispatch its users after 60 s
            # One only cut off for a while (a stalled machine) would go on sending: tell it to stop.
            self.runner.send_message("quit", client_id=member.client_id)
            if self.say:
                self.say(f"  warning: {member.lost}")

    def _wait(self, done: Callable[[], bool], timeout_s: float, what: str, note: bool = False) -> None:
        """Wait for `done`; 0 s: no limit. Raises when a local worker exits or a worker is refused."""
        start = time.monotonic()
        noted = start
        while not done():
            if self.refusal:
                raise VersionMismatch(self.refusal)
            dead = [p.returncode for p in self.processes if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a load worker exited (code {dead[0]}) while waiting for {what}")
            now = time.monotonic()
            if timeout_s and now - start > timeout_s:
                raise TimeoutError(f"gave up waiting {timeout_s:.0f} s for {what} "
                                   f"({len(self._ready())} connected to {self.address})")
            if note and self.say and not self.processes and now - noted >= WAIT_NOTE_S:
                noted = now
                self.say(f"waiting for load workers on {self.address}: {len(self._ready())} of {self.workers} "
                         f"connected after {now - start:.0f} s")
            gevent.sleep(0.05)

    def _live(self) -> list[Member]:
        return [m for m in self.members if m.lost is None]

    def start_step(self, step: StepSpec) -> None:
        self.step_index, self.step_label, self.step_started = step.index, step.label, time.monotonic()
        self._check_lost()  # one gone since the last step is lost in this one: its share is never sent
        for member in self.members:
            member.records, member.status = [], None
        for member in self._live():
            self.runner.send_message("chatspec_step", step.to_wire(), client_id=member.client_id)
        self.runner.start(step.users, spawn_rate=max(step.users, 1) * 20, wait=False)

    def status(self) -> list[dict[str, Any]]:
        """The latest status of each worker in this step (one not yet heard from is left out); a lost
        worker's last one, counted as finished: nothing more will come from it."""
        for member in self._live():
            self.runner.send_message("chatspec_poll", client_id=member.client_id)
        gevent.sleep(0.05)
        self._check_lost()
        statuses = []
        for member in self.members:
            if member.lost is not None:
                last = member.status or {"worker": member.index, "step": self.step_index, "scheduled": 0, "sent": 0,
                                         "done": 0, "failed": 0, "tokens": 0, "ended_by": None, "refused": 0,
                                         "late_claims": 0, "ttft_ms_recent": []}
                statuses.append({**last, "finished": True, "inflight": 0, "stopped": True, "lost": True})
            elif member.status is not None:
                statuses.append(member.status)
        return statuses

    def stop_sending(self) -> None:
        for member in self._live():
            self.runner.send_message("chatspec_stop", client_id=member.client_id)

    def finish(self) -> tuple[list[RequestRecord], list[dict[str, Any]], list[ProcessCounts]]:
        """Every record of the step (a lost worker's: those it reported), health and counts."""
        self.collected.clear()
        for member in self._live():
            self.runner.send_message("chatspec_collect", client_id=member.client_id)

        def collected() -> bool:
            self._check_lost()
            return all(m.index in self.collected for m in self._live())

        self._wait(collected, COLLECT_TIMEOUT_S, "workers' records")
        self.runner.stop()
        records, health, counts = [], [], []
        for member in self.members:
            records += [RequestRecord.from_wire(r) for r in member.records]
            data = self.collected.get(member.index)
            if data is not None:
                health.append(data["health"])
                counts.append(ProcessCounts.from_wire(data["counts"]))
            elif member.lost_step == self.step_index:  # what it last said; its in-flight requests never ended
                last = member.status or {}
                counts.append(ProcessCounts(worker=member.index, scheduled=last.get("scheduled", 0),
                                            sent=last.get("sent", 0), done=len(member.records),
                                            late_claims=last.get("late_claims", 0), ended_by=last.get("ended_by")))
        return records, health, counts

    def lost(self) -> list[str]:
        """Why each worker lost in the current step is gone."""
        return [m.lost for m in self.members if m.lost is not None and m.lost_step == self.step_index]

    def notes(self) -> list[str]:
        """Workers sent away since the last call (late, one too many, another version)."""
        notes, self._notes = self._notes, []
        return notes

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
