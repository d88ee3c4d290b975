"""A target that stops answering mid-run: conformance and load stop there with exit 2, say where and
how the server ended, and still write their reports (instead of a hundred 'transport error' failures).

Every server here is a real subprocess that really dies: by its own SIGSEGV (the mock engine's
--mock-fault segfault, at a set generation), or killed by the test with SIGKILL or SIGSEGV.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance.runner import endpoint_gone
from conformance.target import Target
from load.health import GoneWatch
from reference_server.launcher import RunningServer, free_port, running_server
from reports import CheckResult, RunReport, write_all

ROOT = Path(__file__).resolve().parent.parent


def child_pids(pid: int) -> list[int]:
    """The direct children of a process (Linux /proc)."""
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids += [int(p) for p in (task / "children").read_text().split()]
    return pids


def start(module: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)


def read_until(stream, marker: str, limit: int = 2000) -> list[str]:
    """Lines of `stream` up to and including the first that contains `marker`."""
    seen = []
    for _ in range(limit):
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return seen
    raise AssertionError(f"{marker!r} never came; got:\n{''.join(seen)}")


def finish(process: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def kill_embedded_server(process: subprocess.Popen[str], after: str, sig: signal.Signals) -> tuple[int, str, str]:
    """Once `after` shows in the tool's progress, kill the server it started with `sig`; how the tool ended."""
    read_until(process.stderr, after)
    (server_pid,) = child_pids(process.pid)
    os.kill(server_pid, sig)
    return finish(process)


@pytest.fixture
def crashing_mock() -> Iterator[RunningServer]:
    """A mock server that kills itself with SIGSEGV at its 30th generation (the start-up check is the 1st)."""
    with running_server("--ttft-ms", "0", "--itl-ms", "0", "--mock-fault", "segfault", "--mock-fault-at", "30",
                        engine="mock") as server:
        yield server


def target_args(server: RunningServer) -> list[str]:
    return ["--base-url", server.base_url, "--api-key", server.api_key or "", "--model", server.model]


# ---- conformance ----------------------------------------------------------------------------


def test_conformance_stops_when_the_server_crashes_mid_run(crashing_mock: RunningServer, tmp_path: Path) -> None:
    process = start("conformance", *target_args(crashing_mock), "--report-dir", str(tmp_path))
    code, out, err = finish(process)
    assert code == 2, out + err
    assert crashing_mock.process.wait(timeout=10) == -signal.SIGSEGV
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: the endpoint stopped answering at check ")
    assert f"(connection refused at 127.0.0.1:{crashing_mock.base_url.rsplit(':', 1)[1]})" in last
    assert "conformance ABORTED" in out
    assert err.count("ERROR") == 1, "one check errs (the one the server died in), none after it"
    data = json.loads((tmp_path / "conformance.json").read_text())
    assert data["verdict"] == "aborted" and data["aborted"] == last.removeprefix("error: ")
    assert data["not_run"] and len(data["checks"]) + len(data["not_run"]) > 100
    assert data["checks"][-1]["outcome"] == "error"
    assert "stopped answering during this check" in data["checks"][-1]["message"]
    junit = ET.parse(tmp_path / "junit.xml").getroot()
    aborted_case = junit.find("./testsuite[@name='run']/testcase/error")
    assert aborted_case is not None and aborted_case.get("type") == "aborted"
    assert 'id="aborted"' in (tmp_path / "conformance.html").read_text()


def test_conformance_stops_when_the_server_is_killed(tmp_path: Path) -> None:
    # Slow tokens so the run is still going when the server is killed after a few checks.
    with running_server("--ttft-ms", "20", "--itl-ms", "20", engine="mock") as server:
        process = start("conformance", *target_args(server), "--report-dir", str(tmp_path))
        read_until(process.stderr, "[  5/")
        server.process.send_signal(signal.SIGKILL)
        code, out, err = finish(process)
    assert code == 2, out + err
    assert "error: the endpoint stopped answering at check" in err and "connection refused" in err
    data = json.loads((tmp_path / "conformance.json").read_text())
    assert data["verdict"] == "aborted" and len(data["not_run"]) > 50


def test_conformance_names_how_the_embedded_server_ended(tmp_path: Path) -> None:
    process = start("conformance", "--embedded-server", "mock", "--report-dir", str(tmp_path))
    code, out, err = kill_embedded_server(process, "[  1/", signal.SIGSEGV)
    assert code == 2, out + err
    assert "(embedded server exited with signal 11 (SIGSEGV))" in err.strip().splitlines()[-1]
    assert "embedded server exited with signal 11" in json.loads((tmp_path / "conformance.json").read_text())[
        "aborted"]


def test_conformance_stops_when_the_server_turns_unhealthy(tmp_path: Path) -> None:
    # From its 30th generation on, every generation raises: the server answers 500 to everything.
    with running_server("--ttft-ms", "0", "--itl-ms", "0", "--mock-fault", "raise", "--mock-fault-at", "30",
                        engine="mock") as server:
        process = start("conformance", *target_args(server), "--report-dir", str(tmp_path))
        code, out, err = finish(process)
    assert code == 2, out + err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: the endpoint stopped answering at check ")
    assert last.endswith("(a minimal request that succeeded before the run was answered HTTP 500, again)")
    data = json.loads((tmp_path / "conformance.json").read_text())
    assert data["verdict"] == "aborted" and len(data["not_run"]) > 50
    assert sum(c["outcome"] in ("failed", "error") for c in data["checks"]) == 1, "one check fails, none after it"


def test_endpoint_gone_tells_refused_from_listening() -> None:
    port = free_port()
    target = Target(base_url=f"http://127.0.0.1:{port}", api_key=None, model="m", timeout_s=5)
    assert endpoint_gone(target) == f"connection refused at 127.0.0.1:{port}"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        assert endpoint_gone(target) is None
        assert endpoint_gone(target, lambda: None) is None
        assert endpoint_gone(target, lambda: "exit code 3") == "embedded server exited with exit code 3"


def test_endpoint_gone_tells_a_wedged_endpoint_when_a_request_was_known_good() -> None:
    port = free_port()
    target = Target(base_url=f"http://127.0.0.1:{port}", api_key=None, model="m", timeout_s=1)
    with socket.socket() as listener:  # takes connections (the kernel's backlog), never answers
        listener.bind(("127.0.0.1", port))
        listener.listen(8)
        assert endpoint_gone(target) is None  # without a known-good request, a slow answer is the check's finding
        assert endpoint_gone(target, known_good=True) == (
            "a minimal request that succeeded before the run timed out after 1 s, again")


def test_aborted_report_round_trips_and_is_never_a_pass(tmp_path: Path) -> None:
    report = RunReport(title="t", target={}, started_at="2026-11-29T00:00:00+00:00", duration_s=1.0,
                       results=[CheckResult(id="a", feature="f", category="c", outcome="passed", duration_s=0.1)],
                       aborted="the endpoint stopped answering at check a (connection refused at h:1)",
                       not_run=["b", "c"])
    assert report.failed() and report.verdict() == "ABORTED"
    assert RunReport.from_dict(report.to_dict()) == report
    paths = write_all(report, tmp_path)
    junit = ET.parse(paths["junit"]).getroot()
    assert junit.get("errors") == "1" and junit.get("tests") == "2"
    assert "checks not run (2):\nb\nc" in junit.find(".//error").text
    html = paths["html"].read_text()
    assert 'id="verdict">ABORTED<' in html and "2 check(s) did not run: b, c" in html


# ---- load -----------------------------------------------------------------------------------


def test_load_stops_when_the_server_crashes_mid_step(crashing_mock: RunningServer, tmp_path: Path) -> None:
    process = start("load", "--quiet", *target_args(crashing_mock), "--users", "2", "--duration", "60",
                    "--sweep", "2,4", "--warmup", "0", "--output-tokens", "8", "--report-dir", str(tmp_path))
    code, out, err = finish(process)
    assert code == 2, out + err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: the endpoint stopped answering in step 2 users after ")
    assert "had its connection refused" in last
    doc = json.loads((tmp_path / "load.json").read_text())
    assert doc["aborted"] == last.removeprefix("error: ") and doc["steps_not_run"] == ["4 users"]
    step = doc["steps"][0]
    assert step["aborted"] and step["metrics"]["requests_total"] > 0
    assert step["metrics"]["requests_failed"] > 0, "the refused requests are reported, not hidden"
    assert 0 < step["metrics"]["requests_refused"] <= step["metrics"]["requests_failed"]
    assert 'id="aborted"' in (tmp_path / "load.html").read_text()


def test_load_names_how_the_embedded_server_ended(tmp_path: Path) -> None:
    process = start("load", "--embedded-server", "mock", "--users", "2", "--duration", "60",
                    "--output-tokens", "8", "--report-dir", str(tmp_path))
    code, out, err = kill_embedded_server(process, "[step 1/1", signal.SIGKILL)
    assert code == 2, out + err
    assert "embedded server exited with signal 9 (SIGKILL)" in err.strip().splitlines()[-1]
    assert json.loads((tmp_path / "load.json").read_text())["aborted"].endswith(
        "embedded server exited with signal 9 (SIGKILL)")


def poll(done: int, refused: int) -> list[dict[str, int]]:
    return [{"done": done, "refused": refused}]


def test_gone_watch_needs_two_polls_of_nothing_but_refusals() -> None:
    watch = GoneWatch(start=0.0)
    assert watch.update(poll(10, 0), 1.0) is None  # answered
    assert watch.update(poll(30, 15), 2.0) is None  # the server died during this poll: mixed
    assert watch.update(poll(60, 45), 3.0) is None  # one poll of refusals only: not yet
    assert watch.update(poll(90, 75), 4.0) == "every request that ended in the last 2.0 s had its connection refused"


def test_gone_watch_is_reset_by_an_answer_and_ignores_idle_polls() -> None:
    watch = GoneWatch(start=0.0)
    assert watch.update(poll(5, 5), 1.0) is None
    assert watch.update(poll(6, 5), 2.0) is None  # one answered request: the endpoint is there
    assert watch.update(poll(8, 7), 3.0) is None
    assert watch.update(poll(8, 7), 4.0) is None  # nothing ended (long requests): no evidence either way
    assert watch.update(poll(9, 8), 5.0) is not None


def test_gone_watch_reports_an_exited_server_at_once() -> None:
    status: list[str | None] = [None]
    watch = GoneWatch(start=0.0, server_exit=lambda: status[0])
    assert watch.update(poll(3, 0), 1.0) is None
    status[0] = "signal 11 (SIGSEGV)"
    assert watch.update(poll(3, 0), 2.0) == "embedded server exited with signal 11 (SIGSEGV)"
