"""The server's start-up check: one short generation before it is ready, a one-line reason and
exit 2 when the engine cannot generate, a native crash turned into a reason by the child check."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import requests

from reference_server.engines.mock import MockEngine
from reference_server.launcher import running_server
from reference_server.self_check import SelfCheckFailed, check_in_child, check_in_process

MOCK = ("--engine", "mock", "--no-auth", "--ttft-ms", "0", "--itl-ms", "0")


def serve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `python -m reference_server ARGS` to its end (it ends at once when the check fails)."""
    return subprocess.run([sys.executable, "-m", "reference_server", "--port", "0", *args],
                          capture_output=True, text=True, timeout=timeout)


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_self_check_only_passes_on_a_working_engine() -> None:
    result = serve(*MOCK, "--self-check-only")
    assert result.returncode == 0, result.stderr
    assert "self-check passed: mock engine" in result.stdout
    assert "4 tokens" in result.stdout


def test_engine_failing_its_first_generation_exits_2_with_one_line() -> None:
    result = serve(*MOCK, "--mock-fault", "raise")
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: the mock engine failed its start-up check: RuntimeError: mock fault: "
                               "generation 1 fails on purpose")
    assert "log: " in lines[0]


def test_engine_failing_inline_check_exits_2_too() -> None:
    result = serve(*MOCK, "--mock-fault", "raise", "--self-check", "inline")
    assert result.returncode == 2
    assert error_lines(result)[-1].startswith("error: the mock engine failed its start-up check: RuntimeError")


def test_native_crash_during_the_check_becomes_a_reason_not_a_crash() -> None:
    result = serve(*MOCK, "--mock-fault", "segfault")
    assert result.returncode == 2, "the server itself must not die by the signal"
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert "the mock engine crashed with signal 11 (SIGSEGV) during its start-up check" in lines[0]


def test_inline_check_cannot_survive_a_native_crash() -> None:
    """The negative control: without the child process, the crash takes the server with it."""
    result = serve(*MOCK, "--mock-fault", "segfault", "--self-check", "inline")
    assert result.returncode == -signal.SIGSEGV


def test_crash_hint_names_the_likely_cause() -> None:
    with pytest.raises(SelfCheckFailed) as caught:
        check_in_child([*MOCK, "--mock-fault", "segfault"], "mock", 60, crash_hint="rebuild it portably")
    assert "signal 11 (SIGSEGV)" in str(caught.value) and "; rebuild it portably (log: " in str(caught.value)
    with pytest.raises(SelfCheckFailed) as caught:  # an exception, not a crash: no build hint
        check_in_child([*MOCK, "--mock-fault", "raise"], "mock", 60, crash_hint="rebuild it portably")
    assert "rebuild it portably" not in str(caught.value)


def test_check_off_starts_a_broken_engine_and_its_requests_get_500() -> None:
    with running_server("--mock-fault", "raise", "--self-check", "off", engine="mock", api_key=None) as server:
        response = requests.post(server.base_url + "/v3/openai/chat/completions", timeout=30, json={
            "model": "mock", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"


def test_fault_after_the_check_lets_the_server_start() -> None:
    """--mock-fault-at counts the check's generation: at 3, the check and one request succeed."""
    with running_server("--mock-fault", "raise", "--mock-fault-at", "3", engine="mock", api_key=None) as server:
        body = {"model": "mock", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
        url = server.base_url + "/v3/openai/chat/completions"
        assert requests.post(url, json=body, timeout=30).status_code == 200
        assert requests.post(url, json=body, timeout=30).status_code == 500


def test_launcher_reports_the_servers_one_line_reason() -> None:
    with pytest.raises(RuntimeError) as caught, running_server("--mock-fault", "raise", engine="mock"):
        pass
    message = str(caught.value)
    assert message.startswith("reference server ended before it was ready (exit code 2): the mock engine failed")
    assert "\n" not in message


def test_check_in_process_reports_an_exception() -> None:
    with pytest.raises(SelfCheckFailed, match=r"^RuntimeError: mock fault: generation 1"):
        check_in_process(MockEngine(fault="raise"), timeout_s=30)


def test_check_in_process_reports_a_hang() -> None:
    with pytest.raises(SelfCheckFailed, match="no answer to a 4-token generation within 0.2 s"):
        check_in_process(MockEngine(ttft_ms=5000), timeout_s=0.2)


def test_check_in_process_passes_and_summarises() -> None:
    summary = check_in_process(MockEngine(), timeout_s=30)
    assert "prompt tokens -> 4 tokens" in summary


@pytest.mark.slow
def test_llamacpp_engine_passes_its_self_check_on_this_machine() -> None:
    result = serve("--no-auth", "--self-check-only", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "self-check passed: llamacpp engine" in result.stdout
