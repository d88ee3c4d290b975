"""A run spread over machines: `python -m load --master --expect-workers N` and N separate
`python -m load.worker` processes, each launched on its own as on separate hosts, the workers
connecting over TCP from their own loopback addresses (127.0.0.2, 127.0.0.3 stand in for other
hosts). The mock server's `--record` file is the oracle: what it received is counted, not what the
tool says it sent.

Each launch is bounded (a timeout kills every process left) and each run lasts a few seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from oracle import RecordFile, load_requests

from load.export import read_requests
from load.version import PROTOCOL, VERSION
from reference_server.launcher import RunningServer, free_port, running_server

ROOT = Path(__file__).resolve().parent.parent
EXACT = ("--extra-body", '{"logit_bias": {"0": -100}}')  # the mock never ends early: answers are max_tokens long
RUN_TIMEOUT_S = 60.0
# A worker launched by this script: it may pose as another chatspec release (this test's stand-in
# for a worker installed from another version), give up on a silent master sooner than Locust's
# 60 s, and wait for a file before it connects (so it joins at a chosen moment, its imports done).
LAUNCH = """
import os, pathlib, sys, time
from locust import runners
from load import version, worker
if os.environ.get("TEST_WORKER_VERSION"):
    version.VERSION = os.environ["TEST_WORKER_VERSION"]
if os.environ.get("TEST_MASTER_HEARTBEAT_TIMEOUT"):  # Locust's 60 s, shortened for a test
    runners.MASTER_HEARTBEAT_TIMEOUT = float(os.environ["TEST_MASTER_HEARTBEAT_TIMEOUT"])
go = os.environ.get("TEST_WORKER_GO")
while go and not pathlib.Path(go).exists():
    time.sleep(0.02)
sys.exit(worker.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, RecordFile]]:
    path = tmp_path_factory.mktemp("distributed") / "record.jsonl"
    with running_server("--ttft-ms", "20", "--itl-ms", "2", "--max-queue", "1000", "--record", str(path),
                        engine="mock") as running:
        yield running, RecordFile(path)


@dataclass
class Launch:
    """One process of the run, its output in files (no pipe to fill)."""

    name: str
    process: subprocess.Popen[bytes]
    out: Path

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> int:
        return self.process.wait(timeout=timeout)

    @property
    def stderr(self) -> str:
        return (self.out.with_suffix(".err")).read_text()


class Cluster:
    """A master and its workers, each its own process; every one still running is killed at the end."""

    def __init__(self, tmp: Path, server: tuple[RunningServer, RecordFile]) -> None:
        self.tmp, self.server = tmp, server
        self.port = free_port()
        self.report = tmp / "report"
        self.launches: list[Launch] = []

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Launch:
        out = self.tmp / f"{name}.out"
        with open(out, "wb") as stdout, open(out.with_suffix(".err"), "wb") as stderr:
            process = subprocess.Popen(argv, stdout=stdout, stderr=stderr, cwd=ROOT,
                                       env={**os.environ, **(env or {})})
        launch = Launch(name, process, out)
        self.launches.append(launch)
        return launch

    def master(self, workers: int, *args: str) -> Launch:
        running, _ = self.server
        return self._start("master", [
            sys.executable, "-m", "load", "--base-url", running.base_url, f"--api-key={running.api_key}",
            "--model", running.model, "--warmup", "0", *EXACT, "--report-dir", str(self.report),
            "--master", "--expect-workers", str(workers), "--master-bind-host", "127.0.0.1",
            "--master-bind-port", str(self.port), "--expect-workers-max-wait", "30", *args])

    def worker(self, name: str, bind: str, env: dict[str, str] | None = None) -> Launch:
        return self._start(name, [sys.executable, "-c", LAUNCH, "--master-host", "127.0.0.1",
                                  "--master-port", str(self.port), "--bind-host", bind], env)

    def close(self) -> None:
        for launch in self.launches:
            if launch.process.poll() is None:
                launch.process.kill()
                launch.process.wait()

    def doc(self) -> dict[str, Any]:
        return json.loads((self.report / "load.json").read_text())

    def lines(self) -> list[dict[str, Any]]:
        return list(read_requests(self.report / "requests.jsonl"))


@pytest.fixture
def cluster(tmp_path: Path, server: tuple[RunningServer, RecordFile]) -> Iterator[Cluster]:
    running = Cluster(tmp_path, server)
    try:
        yield running
    finally:
        running.close()


def received_since(record: RecordFile, mark: int) -> list[dict[str, Any]]:
    """The load's requests the server has logged so far (no waiting for the file to settle)."""
    lines = record.path.read_text().splitlines()[mark:] if record.path.exists() else []
    return load_requests(json.loads(line) for line in lines if line.strip())


def wait_until(done: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def connections_to(launch: Launch, port: int) -> list[Any]:
    """This process's TCP connections to a local `port` (none once it has exited)."""
    import psutil

    try:
        connections = psutil.Process(launch.process.pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return []
    return [c for c in connections if c.raddr and c.raddr.port == port]


def source_ip(launch: Launch, port: int) -> str | None:
    """The local address of this process's connection to the master, once it has one."""
    import psutil

    return next((c.laddr.ip for c in connections_to(launch, port) if c.status == psutil.CONN_ESTABLISHED), None)


def server_ports(launch: Launch, server_port: int) -> set[int]:
    """The local ports of this process's open connections to the chat server: the server's record
    names each request's client by address and port, so these say which requests are this worker's."""
    return {c.laddr.port for c in connections_to(launch, server_port)}


def worker_index(launch: Launch) -> int:
    """The index (share) the master gave this worker, from its own line (the last: before the run
    starts, a worker may be given another index when one chosen with it is gone)."""
    line = [line for line in launch.stderr.splitlines() if "settings taken" in line][-1]
    return int(line.split()[2])


# ---- two workers on two "hosts": counts and merged percentiles -------------------------------------


@dataclass
class TwoWorkerRun:
    arrived: list[dict[str, Any]]
    doc: dict[str, Any]
    lines: list[dict[str, Any]]
    sources: set[str]
    codes: dict[str, int]
    stderr: str


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory, server: tuple[RunningServer, RecordFile]) -> TwoWorkerRun:
    cluster = Cluster(tmp_path_factory.mktemp("two-workers"), server)
    try:
        mark = server[1].mark()
        master = cluster.master(2, "--users", "4", "--max-requests", "61", "--duration", "60", "--output-tokens", "12")
        workers = [cluster.worker("w2", "127.0.0.2"), cluster.worker("w3", "127.0.0.3")]
        sources: set[str] = set()

        def connected() -> bool:  # looked at while the run lasts: the connection closes with it
            sources.update(ip for w in workers if (ip := source_ip(w, cluster.port)))
            return len(sources) == 2 or master.process.poll() is not None

        wait_until(connected, RUN_TIMEOUT_S, "both workers to connect")
        codes = {launch.name: launch.wait() for launch in (master, *workers)}
        return TwoWorkerRun(received_since(server[1], mark), cluster.doc(), cluster.lines(), sources, codes,
                            master.stderr)
    finally:
        cluster.close()


def test_master_and_two_remote_workers_send_exactly_the_count_asked(two_workers):
    run = two_workers
    assert run.codes == {"master": 0, "w2": 0, "w3": 0}, run.stderr[-3000:]
    assert run.sources == {"127.0.0.2", "127.0.0.3"}  # each worker connected from its own "host"
    assert len(run.arrived) == 61 and all(r["status"] == 200 and r["body"]["max_tokens"] == 12 for r in run.arrived)
    step = run.doc["steps"][0]
    assert run.doc["settings"]["workers"] == 2 and step["client"]["workers"] == 2
    fidelity = step["fidelity"]
    assert fidelity["ok"] and (fidelity["sent"], fidelity["done"], fidelity["asked"]) == (61, 61, 61)
    # 61 split as evenly as integers allow, each worker its own share
    assert sorted(Counter(line["worker"] for line in run.lines).values()) == [30, 31]
    # every request the server answered is one line of the report, and no other
    assert sorted(line["request_id"] for line in run.lines) == sorted(r["response_id"] for r in run.arrived)


def test_merged_percentiles_are_exact_over_every_workers_raw_samples(two_workers):
    """The master's TTFT, ITL and E2E percentiles are numpy's over the raw samples of both workers
    (requests.jsonl), as one process computes them: no histogram, no Locust stats rounding."""
    lines = [line for line in two_workers.lines if line["in_window"] and line["ok"]]
    assert len(lines) == 61 and {line["worker"] for line in lines} == {0, 1}
    metrics = two_workers.doc["steps"][0]["metrics"]
    ttft = [(line["first_token_s"] - line["send_s"]) * 1e3 for line in lines]
    e2e = [(line["end_s"] - line["send_s"]) * 1e3 for line in lines]
    itl = np.concatenate([np.diff(line["token_ms"]) for line in lines])
    assert len(itl) == 61 * 11
    for name, samples in (("ttft", ttft), ("e2e", e2e), ("itl", itl)):
        p50, p90, p99 = np.percentile(samples, [50, 90, 99])
        got = metrics[f"{name}_ms"]
        assert got["count"] == len(samples)
        # requests.jsonl keeps microseconds: the figures agree to that rounding, not to a bucket's width
        assert (got["p50"], got["p90"], got["p99"]) == pytest.approx((p50, p90, p99), abs=2e-3), name


# ---- a worker lost mid-step ---------------------------------------------------------------------


def test_a_worker_killed_mid_step_is_reported_and_its_records_kept(cluster, server):
    running, record = server
    mark = record.mark()
    # 2 users a worker, ~100 ms a request: the survivor's 60 take ~3 s; the victim dies
    # after its 15th answer
    master = cluster.master(2, "--users", "4", "--max-requests", "120", "--duration", "60", "--output-tokens", "40")
    workers = {"w2": cluster.worker("w2", "127.0.0.2"), "w3": cluster.worker("w3", "127.0.0.3")}
    victim = workers["w2"]
    # Killed once the server has answered 15 of the victim's own requests (not 15 of anyone's: on a
    # slow machine one worker may start well after the other), so it has reported some before dying.
    server_port = urlsplit(running.base_url).port
    victim_ports: set[int] = set()

    def victim_answered() -> int:
        victim_ports.update(server_ports(victim, server_port))
        return sum(1 for r in received_since(record, mark)
                   if r["client"] and int(r["client"].rsplit(":", 1)[1]) in victim_ports)

    wait_until(lambda: victim_answered() >= 15, RUN_TIMEOUT_S, "the victim's share to be under way")
    victim.process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    assert master.wait(timeout=30) == 2, master.stderr[-3000:]  # finishes the step, does not hang
    assert time.monotonic() - killed_at < 20  # Locust's heartbeat noticed in seconds, no 60 s wait
    assert workers["w3"].wait(timeout=10) == 0
    assert "was lost" in master.stderr and "later steps were not run" in master.stderr

    doc = cluster.doc()
    step = doc["steps"][0]
    assert doc["partial"] and not step["fidelity"]["ok"]
    assert any("load worker" in p and "was lost" in p for p in step["fidelity"]["problems"])
    lines = cluster.lines()
    lost = worker_index(victim)
    kept = [line for line in lines if line["worker"] == lost]
    assert len(kept) >= 5  # what the victim reported before it died is in the report
    assert sum(1 for line in lines if line["worker"] != lost) == 60  # the survivor's whole share

    arrived = received_since(record, mark)
    reported = {line["request_id"] for line in lines}
    assert reported <= {r["response_id"] for r in arrived}
    # The server saw more than the report holds only by the victim's last moments: requests in
    # flight when it died (the server logged their client as gone) and those answered after its
    # last poll (0.2 s before), by the victim's own connections: 2 users of ~100 ms each.
    victim_clients = {r["client"] for r in arrived if r["response_id"] in {line["request_id"] for line in kept}}
    unreported = [r for r in arrived if r["response_id"] not in reported]
    cut = [r for r in unreported if r["client_gone"]]
    answered = [r for r in unreported if not r["client_gone"]]
    assert len(cut) <= 2 and len(answered) <= 6, (len(cut), len(answered))
    assert all(r["client"] in victim_clients for r in answered), (victim_clients, answered)
    assert step["fidelity"]["done"] == len(lines) and step["fidelity"]["sent"] >= len(lines)


# ---- who may join -------------------------------------------------------------------------------


def test_a_worker_of_another_version_is_refused(cluster, server):
    _, record = server
    mark = record.mark()
    master = cluster.master(1, "--users", "2", "--max-requests", "4")
    worker = cluster.worker("w2", "127.0.0.2", env={"TEST_WORKER_VERSION": "0.0.0-other"})
    assert worker.wait() == 2
    assert master.wait() == 2
    for text in (worker.stderr, master.stderr):
        assert f"chatspec 0.0.0-other (protocol {PROTOCOL})" in text and f"chatspec {VERSION} (protocol" in text
    assert worker.stderr.strip().count("\n") == 0  # one line
    assert received_since(record, mark) == []  # nothing was sent


def test_a_worker_that_joins_a_run_under_way_is_sent_away(cluster, server):
    _, record = server
    mark = record.mark()
    go = cluster.tmp / "go"
    master = cluster.master(1, "--users", "2", "--max-requests", "60", "--duration", "60", "--output-tokens", "40")
    cluster.worker("w2", "127.0.0.2")
    late = cluster.worker("w3", "127.0.0.3", env={"TEST_WORKER_GO": str(go)})
    wait_until(lambda: len(received_since(record, mark)) >= 5, RUN_TIMEOUT_S, "the step to be under way")
    go.touch()
    assert late.wait() == 2
    assert "cannot join a run under way" in late.stderr
    assert master.wait() == 0, master.stderr[-3000:]  # the run itself was not disturbed
    step = cluster.doc()["steps"][0]
    assert any("into the run" in w and "sent away" in w for w in step["warnings"])
    assert step["fidelity"]["ok"] and step["fidelity"]["sent"] == 60
    assert {line["worker"] for line in cluster.lines()} == {0} and len(received_since(record, mark)) == 60
    # Locust left to itself rebalances the users onto a worker that joins (cutting a request) and
    # does not give them back when it leaves: the step would end with fewer users than asked.
    assert step["metrics"]["requests_failed"] == 0 and step["fidelity"]["mean_concurrency"] > 1.7


def test_a_worker_gone_before_the_run_starts_is_replaced_by_the_next(cluster, server):
    """A worker that connected and died (a pod restarting) before the run began is not waited for:
    it was chosen, never took the settings, and the next worker ready takes its place."""
    _, record = server
    mark = record.mark()
    go = cluster.tmp / "go"
    master = cluster.master(2, "--users", "2", "--max-requests", "20", "--output-tokens", "8")
    doomed = cluster.worker("w2", "127.0.0.2")
    wait_until(lambda: source_ip(doomed, cluster.port) is not None, RUN_TIMEOUT_S, "the first worker to connect")
    time.sleep(0.5)  # its hello is in
    doomed.process.send_signal(signal.SIGKILL)
    doomed.process.wait()
    # their imports done, both connect at once: before Locust's heartbeat has missed the dead one
    others = [cluster.worker(name, bind, env={"TEST_WORKER_GO": str(go)})
              for name, bind in (("w3", "127.0.0.3"), ("w4", "127.0.0.4"))]
    time.sleep(1.0)
    go.touch()
    assert master.wait(timeout=40) == 0, master.stderr[-3000:]
    assert [w.wait(timeout=10) for w in others] == [0, 0]
    assert sorted(worker_index(w) for w in others) == [0, 1]
    assert len(received_since(record, mark)) == 20 and cluster.doc()["steps"][0]["fidelity"]["ok"]


def test_a_worker_whose_master_dies_stops_sending_and_says_so(cluster, server):
    _, record = server
    mark = record.mark()
    master = cluster.master(1, "--users", "2", "--max-requests", "500", "--duration", "60", "--output-tokens", "40")
    worker = cluster.worker("w2", "127.0.0.2", env={"TEST_MASTER_HEARTBEAT_TIMEOUT": "3"})
    wait_until(lambda: len(received_since(record, mark)) >= 5, RUN_TIMEOUT_S, "the step to be under way")
    master.process.send_signal(signal.SIGKILL)
    assert worker.wait(timeout=20) == 2
    assert "stopped answering" in worker.stderr
    time.sleep(0.5)
    settled = len(received_since(record, mark))
    time.sleep(1.0)
    assert len(received_since(record, mark)) == settled < 500  # its users stopped


def test_a_master_whose_workers_never_come_gives_up_after_its_max_wait(cluster, server):
    _, record = server
    mark = record.mark()
    master = cluster.master(2, "--max-requests", "4", "--expect-workers-max-wait", "1")  # the last one counts
    assert master.wait(timeout=30) == 2
    assert "gave up waiting 1 s for 2 workers to connect (0 connected" in master.stderr
    assert received_since(record, mark) == []


def test_master_options_are_checked_before_anything_starts(capsys):
    from load.cli import main

    for argv, words in ((["--master"], "--expect-workers"), (["--expect-workers", "2"], "needs --master"),
                        (["--master", "--expect-workers", "2", "--workers", "2"], "leave out --workers")):
        assert main(["--base-url", "http://127.0.0.1:9", *argv]) == 2
        assert words in capsys.readouterr().err
