"""`python -m conformance` and the pytest plugin: exit codes, reports, honest capabilities."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from broken_servers import FAULTS, broken_server, wedged_by_big_body
from plugin_env import plugin_env

from conformance.registry import keyword_matcher
from reference_server.launcher import RunningServer, free_port, running_server


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    with running_server("--ttft-ms", "0", "--itl-ms", "0", engine="mock") as server:
        yield server


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conformance", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def _target(server: RunningServer) -> list[str]:
    return ["--base-url", server.base_url, "--api-key", server.api_key or "", "--model", server.model]


def test_help_explains_itself() -> None:
    out = _cli("--help")
    assert out.returncode == 0
    for word in ("--base-url", "--profile", "--skip-feature", "--report-dir", "Exit status", "--fail-on", "--strict",
                 "RFC 2119", "should", "run last"):
        assert word in out.stdout


def test_passing_run_exits_0_and_writes_reports(mock: RunningServer, tmp_path: Path) -> None:
    out = _cli(*_target(mock), "-k", "usage or streaming", "--report-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "PASS" in out.stderr and "conformance PASSED" in out.stdout
    data = json.loads((tmp_path / "conformance.json").read_text())
    assert data["verdict"] == "passed" and data["summary"]["passed"] >= 10
    assert (tmp_path / "junit.xml").exists() and (tmp_path / "conformance.html").exists()


def test_failing_check_exits_1_with_a_reproduction(mock: RunningServer, tmp_path: Path) -> None:
    # The reference server holds the documented bounds; OpenAI's profile accepts temperature 0.
    out = _cli(*_target(mock), "--profile", "openai", "-k", "ranges.temperature.inclusive_min_end",
               "--report-dir", str(tmp_path))
    assert out.returncode == 1, out.stdout + out.stderr
    check = json.loads((tmp_path / "conformance.json").read_text())["checks"][0]
    assert check["outcome"] == "failed"
    assert check["curl"].startswith("curl ") and "$API_KEY" in check["curl"]
    assert mock.api_key not in check["curl"]
    assert "HTTP 400" in check["response_excerpt"]


def test_unsupported_feature_is_reported_never_passed(mock: RunningServer, tmp_path: Path) -> None:
    out = _cli(*_target(mock), "--skip-feature", "logprobs", "-k", "logprobs", "--report-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "conformance.json").read_text())
    outcomes = {c["id"]: c["outcome"] for c in data["checks"]}
    assert outcomes["logprobs.shape"] == "not_supported"
    assert outcomes["usage.matches_logprobs_nonstream"] == "not_supported"  # relies on logprobs
    assert data["by_feature"]["logprobs"]["passed"] == 0


def test_unreachable_endpoint_exits_2_with_one_line() -> None:
    out = _cli("--base-url", f"http://127.0.0.1:{free_port()}", "--model", "m", "-k", "usage")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "cannot reach" in out.stderr


def test_bad_arguments_exit_2() -> None:
    assert _cli("--base-url", "http://127.0.0.1:1").returncode == 2  # no --model
    assert _cli("--embedded-server", "mock", "-k", "(usage").returncode == 2


def test_list_shows_generated_range_checks() -> None:
    out = _cli("--embedded-server", "mock", "--list", "-k", "ranges and top_p")
    assert out.returncode == 0
    ids = [line.split("\t")[0] for line in out.stdout.splitlines()]
    assert "ranges.top_p.exclusive_min_end" in ids and "ranges.top_p.inclusive_max_end" in ids


def test_keyword_matcher() -> None:
    match = keyword_matcher("stream and not (usage or framing)")
    assert match("streaming.role_first streaming semantic")
    assert not match("usage.stream_last_chunk_only usage semantic")
    assert not match("streaming.done_once_last streaming framing")
    with pytest.raises(ValueError):
        keyword_matcher("a and")


def test_pytest_plugin_runs_checks_as_items(mock: RunningServer, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
               "--chatspec-base-url", mock.base_url, "--chatspec-api-key", mock.api_key or "",
               "--chatspec-model", mock.model, "--chatspec-skip-feature", "logprobs", "-k", "usage", "-rs", "-q"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env=plugin_env(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 passed" in out.stdout and "2 skipped" in out.stdout
    assert "not supported" in out.stdout


def test_a_422_server_fails_only_should_checks(mock: RunningServer, tmp_path: Path) -> None:
    """422 instead of 400 is a should-level deviation: the run passes, unless it fails on should."""
    fault = next(f for f in FAULTS if f.name == "status_422")
    with broken_server(mock.base_url, fault, mock.api_key) as url:
        target = ["--base-url", url, "--api-key", mock.api_key or "", "--model", mock.model]
        out = _cli(*target, "--report-dir", str(tmp_path))
        strict = _cli(*target, "--strict", "-k", "errors.status")
        fail_on = _cli(*target, "--fail-on", "should", "-k", "errors.status_404")
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads((tmp_path / "conformance.json").read_text())
    failed = {c["id"]: c["severity"] for c in data["checks"] if c["outcome"] in ("failed", "error")}
    assert failed == {"errors.status_400": "should", "errors.status_404_model": "should",
                      "errors.status_413": "should", "errors.status_415": "should"}
    assert data["verdict"] == "passed" and data["by_severity"]["should"]["failed"] == 4
    assert "FAIL  should errors.status_415" in out.stderr
    assert "conformance PASSED" in out.stdout and "4 failed (4 should)" in out.stdout
    assert "4 should-level failure(s) do not fail the run" in out.stdout
    assert strict.returncode == 1 and "conformance FAILED" in strict.stdout, strict.stdout + strict.stderr
    assert fail_on.returncode == 1, fail_on.stdout + fail_on.stderr


def test_a_wedged_endpoint_aborts_the_run_and_says_so(mock: RunningServer, tmp_path: Path) -> None:
    """The 16 MiB body runs last; when the endpoint stops answering after it, the run says so."""
    with broken_server(mock.base_url, wedged_by_big_body(), mock.api_key) as url:
        out = _cli("--base-url", url, "--api-key", mock.api_key or "", "--model", mock.model, "--timeout", "3",
                   "-k", "errors", "--report-dir", str(tmp_path))
    assert out.returncode == 2, out.stdout + out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last == ("error: the endpoint stopped answering at check errors.oversized_body (a minimal request that "
                    "succeeded before the run timed out after 3 s, again)")
    data = json.loads((tmp_path / "conformance.json").read_text())
    assert data["verdict"] == "aborted" and data["not_run"] == ["errors.status_413"]
    ids = [c["id"] for c in data["checks"]]
    assert ids[-1] == "errors.oversized_body" and len(ids) > 8
    assert all(c["outcome"] == "passed" or (c["outcome"] == "skipped" and "--profile" in c["message"])
               for c in data["checks"][:-1]), "every check before the wedge passed (or is another profile's)"
    assert data["checks"][-1]["outcome"] == "error"
    assert "stopped answering during this check" in data["checks"][-1]["message"]


def test_pytest_plugin_xfails_should_checks_unless_told(mock: RunningServer, tmp_path: Path) -> None:
    fault = next(f for f in FAULTS if f.name == "status_422")
    with broken_server(mock.base_url, fault, mock.api_key) as url:
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                   "--chatspec-base-url", url, "--chatspec-api-key", mock.api_key or "",
                   "--chatspec-model", mock.model, "-k", "status_415 or wrong_content_type", "-rx", "-q"]
        env = plugin_env(tmp_path)
        lenient = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
        strict = subprocess.run([*command, "--chatspec-fail-on", "should"], capture_output=True, text=True,
                                timeout=300, cwd=tmp_path, env=env)
    assert lenient.returncode == 0, lenient.stdout + lenient.stderr
    summary = lenient.stdout.strip().splitlines()[-1]
    assert "1 passed" in summary and "1 xfailed" in summary and "failed," not in summary, lenient.stdout
    assert "should-level, not gating" in lenient.stdout
    assert strict.returncode == 1 and "1 failed, 1 passed" in strict.stdout, strict.stdout + strict.stderr
    assert "[should] [failed] Content-Type text/plain: expected HTTP 415, got 422" in strict.stdout


def test_list_shows_severities_with_the_wedging_checks_last() -> None:
    out = _cli("--embedded-server", "mock", "--list", "-k", "errors")
    assert out.returncode == 0, out.stderr
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    assert [row[0] for row in rows[-2:]] == ["errors.oversized_body", "errors.status_413"]
    severity = {row[0]: row[3] for row in rows}
    assert severity["errors.malformed_json"] == "must" and severity["errors.status_400"] == "should"
    should = _cli("--embedded-server", "mock", "--list", "-k", "should")
    assert "ranges.temperature.exclusive_min_end" in should.stdout
    assert "ranges.temperature.above_max" not in should.stdout
