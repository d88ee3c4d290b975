"""`python -m load` against a failing server: errors counted by kind (with an example each), a
stalled stream ending at the request timeout, steps bounded by duration + timeout, and Ctrl-C
writing a partial report. The server is the mock engine with an injected fault; what the load
tool counts is held against what the server itself counted (its /metrics)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from reference_server.counts import counts_since, server_counts
from reference_server.launcher import RunningServer, running_server

ROOT = Path(__file__).resolve().parent.parent


def load(server: RunningServer, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "load", "--quiet", "--base-url", server.base_url,
                           f"--api-key={server.api_key or ''}", "--model", server.model, *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def report(directory: Path) -> dict:
    return json.loads((directory / "load.json").read_text())


def health_once_idle(server: RunningServer, timeout_s: float = 30) -> dict:
    """/health once nothing is in flight (or as it is after `timeout_s`): a client's departure
    reaches the server a moment after the client's process has ended."""
    deadline = time.monotonic() + timeout_s
    while True:
        with urllib.request.urlopen(server.base_url + "/health", timeout=10) as answer:
            health = json.loads(answer.read())
        if health["in_flight"] == 0 or time.monotonic() > deadline:
            return health
        time.sleep(0.05)


def test_429_bursts_are_counted_by_kind_with_their_retry_after(tmp_path: Path) -> None:
    with running_server("--ttft-ms", "50", "--itl-ms", "20", "--max-queue", "2", engine="mock") as server:
        before = server_counts(server.base_url)
        result = load(server, "--users", "6", "--duration", "3", "--warmup", "0", "--output-tokens", "5",
                      "--report-dir", str(tmp_path))
        counted = counts_since(before, server_counts(server.base_url))
    assert result.returncode == 0, result.stderr
    metrics = report(tmp_path)["steps"][0]["metrics"]
    # The server answered 200s in full and turned some away with 429, nothing else; with no warm-up
    # every request the step sent is in its window, so each 429 the server sent is one the tool
    # counted (its 200s may include the tool's own preflight, outside the step).
    codes = counted["responses_by_code"]
    assert set(codes) == {"200", "429"} and counted["answered_in_full"] == codes["200"], counted
    assert metrics["errors_by_kind"] == {"http_429": codes["429"]}, (metrics["errors_by_kind"], counted)
    assert 0 < metrics["requests_ok"] <= codes["200"], (metrics["requests_ok"], counted)
    assert metrics["http_429_without_retry_after"] == 0
    assert "queue_full" in metrics["error_examples"]["http_429"]
    assert "errors by kind: http_429" in result.stdout
    html = (tmp_path / "load.html").read_text()
    assert 'id="verdict">ERRORS ' in html and 'id="errors"' in html


def test_server_errors_are_their_own_kind(tmp_path: Path) -> None:
    with running_server("--mock-fault", "raise", "--mock-fault-at", "5", engine="mock") as server:
        before = server_counts(server.base_url)
        result = load(server, "--no-stream", "--users", "2", "--duration", "2", "--warmup", "0",
                      "--output-tokens", "4", "--report-dir", str(tmp_path))
        counted = counts_since(before, server_counts(server.base_url))
    assert result.returncode == 0, result.stderr
    kinds = report(tmp_path)["steps"][0]["metrics"]["errors_by_kind"]
    # every 500 the server counted (each generation from the 5th on fails), and nothing else
    assert counted["responses_by_code"].get("500", 0) > 0, counted
    assert kinds == {"http_5xx": counted["responses_by_code"]["500"]}, (kinds, counted)


def test_a_stalled_stream_ends_at_the_request_timeout_and_the_step_stays_bounded(tmp_path: Path) -> None:
    # From the 2nd generation on (the 1st is the start-up check), every stream stalls after one token.
    with running_server("--ttft-ms", "0", "--itl-ms", "0", "--mock-fault", "stall", "--mock-fault-at", "2",
                        engine="mock") as server:
        before = server_counts(server.base_url)
        start = time.monotonic()
        result = load(server, "--users", "2", "--duration", "3", "--warmup", "0", "--timeout", "2",
                      "--output-tokens", "8", "--report-dir", str(tmp_path))
        seconds = time.monotonic() - start
        health = health_once_idle(server)
        counted = counts_since(before, server_counts(server.base_url))
    assert result.returncode == 0, result.stderr
    assert seconds < 3 + 2 + 15, "duration + request timeout, plus start-up"  # a hung step runs to 120 s
    kinds = report(tmp_path)["steps"][0]["metrics"]["errors_by_kind"]
    assert kinds.get("timeout", 0) >= 2 and set(kinds) == {"timeout"}, kinds
    # The server saw as many answers begin (a first token) and never end as the tool counted
    # timeouts (the tool's one-token preflight is answered in full).
    assert counted["first_tokens"] - counted["answered_in_full"] == kinds["timeout"], (kinds, counted)
    assert health["in_flight"] == 0, "the server let go of the requests their clients abandoned"
    assert counted["running"] == 0 and counted["waiting"] == 0, counted


def test_ctrl_c_writes_a_partial_report(tmp_path: Path) -> None:
    with running_server("--ttft-ms", "10", "--itl-ms", "5", engine="mock") as server:
        process = subprocess.Popen([sys.executable, "-m", "load", "--base-url", server.base_url, "--api-key",
                                    server.api_key or "", "--model", server.model, "--users", "2", "--duration",
                                    "120", "--warmup", "0", "--output-tokens", "8", "--report-dir", str(tmp_path)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        assert process.stderr is not None
        for _ in range(50):
            if "[step 1/1" in process.stderr.readline():
                break
        # Interrupted once the server has answered a few of the step's requests in full (by its own
        # count; the tool's preflight is one), not after a guessed time.
        deadline = time.monotonic() + 60
        while server_counts(server.base_url)["answered_in_full"] < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
        answered = server_counts(server.base_url)["answered_in_full"]
    assert process.returncode == 130, out + err
    assert "the reports hold what was measured until then" in err
    doc = report(tmp_path)
    assert doc["interrupted"] and doc["partial"] and doc["aborted"].startswith("interrupted (Ctrl-C) in step")
    assert 0 < doc["steps"][0]["metrics"]["requests_ok"] <= answered, answered
    assert 'id="verdict">INTERRUPTED<' in (tmp_path / "load.html").read_text()


def test_stale_keep_alive_connections_are_retried_not_counted_as_errors(tmp_path: Path) -> None:
    """A server that closes each connection after a stream without `Connection: close` (llama-server
    does): the next request on it gets no byte; it is sent once more and is no error."""
    sys.path.insert(0, str(ROOT / "tests"))
    from broken_servers import Fault, broken_server

    closing = Fault("close_after_stream", (), close_after_stream=True)
    with running_server("--ttft-ms", "5", "--itl-ms", "2", engine="mock") as server, \
            broken_server(server.base_url, closing, api_key=server.api_key) as url:
        result = subprocess.run([sys.executable, "-m", "load", "--quiet", "--base-url", url, "--api-key",
                                 server.api_key or "", "--model", "mock", "--users", "1", "--duration", "3",
                                 "--warmup", "0", "--output-tokens", "8", "--report-dir", str(tmp_path)],
                                capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    step = report(tmp_path)["steps"][0]
    metrics = step["metrics"]
    assert metrics["requests_failed"] == 0 and metrics["requests_ok"] >= 5
    assert metrics["stale_connection_retries"] >= metrics["requests_ok"] // 2
    assert any(w.startswith("keep-alive: the server closed") for w in step["warnings"])
