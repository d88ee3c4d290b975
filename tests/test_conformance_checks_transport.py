"""The auth, error, streaming and usage checks: all pass on the reference server (mock engine),
and each can fail: every one is caught by some broken server of tests/broken_servers.py (run there,
in test_broken_servers.py, with the reason each must give), and a reset connection by a raw socket."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from broken_servers import CR_ONLY, FAULTS, broken_server

from conformance import registry
from conformance.context import Context
from conformance.registry import Check
from conformance.runner import run_one
from conformance.target import Target
from reference_server.launcher import RunningServer, running_server
from reports import CheckResult

MODULES = ("conformance.checks.errors", "conformance.checks.streaming", "conformance.checks.usage")
IDS = (
    "auth.missing_key", "auth.wrong_key",
    "errors.malformed_json", "errors.wrong_content_type", "errors.unknown_model", "errors.oversized_body",
    "errors.missing_required", "errors.non_object_body", "errors.error_before_stream", "errors.envelope",
    "errors.status_400", "errors.status_404_model", "errors.status_413", "errors.status_415",
    "errors.param_bare_name",
    "streaming.content_type", "streaming.framing", "streaming.chunk_schema", "streaming.constant_fields",
    "streaming.role_first", "streaming.finish_reason_once", "streaming.done_once_last", "streaming.utf8_split",
    "streaming.no_replacement_char",
    "streaming.line_endings",
    "usage.nonstream_present", "usage.totals_add_up", "usage.max_tokens_bound", "usage.stream_last_chunk_only",
    "usage.matches_stream_tokens", "usage.matches_logprobs_nonstream",
)


def my_checks(target: Target) -> dict[str, Check]:
    return {item.id: item for item in registry.collect(target, modules=MODULES)}


def run_fresh(target: Target, ids: tuple[str, ...] | list[str]) -> dict[str, CheckResult]:
    """Each check in its own Context, so no memoized stream is shared."""
    checks = my_checks(target)
    results = {}
    for check_id in ids:
        ctx = Context(target)
        try:
            results[check_id] = run_one(checks[check_id], ctx)
        finally:
            ctx.client.close()
    return results


def not_passed(results: dict[str, CheckResult]) -> dict[str, str]:
    return {r.id: f"{r.outcome}: {r.message}" for r in results.values() if r.outcome != "passed"}


# ---- the reference server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with running_server("--ttft-ms", "0", "--itl-ms", "0", engine="mock") as running:
        yield running


def reference_target(server: RunningServer, base_url: str | None = None, **options: Any) -> Target:
    return Target(base_url=base_url or server.base_url, api_key=server.api_key, model=server.model, timeout_s=60,
                  **options)


def test_the_ids_are_the_agreed_ones(server: RunningServer) -> None:
    checks = my_checks(reference_target(server))
    assert sorted(checks) == sorted(IDS)
    assert {item.feature for item in checks.values()} == {"auth", "errors", "streaming", "usage"}


def test_all_pass_on_the_reference_in_one_context(server: RunningServer) -> None:
    target = reference_target(server)
    checks = my_checks(target)
    ctx = Context(target)
    try:
        results = {check_id: run_one(checks[check_id], ctx) for check_id in IDS}
    finally:
        ctx.client.close()
    assert not not_passed(results)


def test_all_pass_on_the_reference_each_alone(server: RunningServer) -> None:
    assert not not_passed(run_fresh(reference_target(server), IDS))


def test_without_a_key_auth_is_skipped() -> None:
    with running_server("--ttft-ms", "0", "--itl-ms", "0", engine="mock", api_key=None) as open_server:
        target = Target(base_url=open_server.base_url, api_key=None, model=open_server.model, timeout_s=60)
        results = run_fresh(target, ["auth.missing_key", "auth.wrong_key", "errors.unknown_model"])
    assert results["auth.missing_key"].outcome == "skipped"
    assert results["auth.missing_key"].message == "no API key given"
    assert results["auth.wrong_key"].outcome == "skipped"
    assert results["errors.unknown_model"].outcome == "passed"


def test_declared_unsupported_features(server: RunningServer) -> None:
    results = run_fresh(reference_target(server, skip_features=frozenset({"logprobs", "n", "seed"})), IDS)
    assert results["usage.matches_stream_tokens"].outcome == "not_supported"
    assert results["usage.matches_logprobs_nonstream"].outcome == "not_supported"
    assert results["streaming.no_replacement_char"].outcome == "not_supported"  # compares seeded runs
    # without n the per-choice stream rules still run, on an n=1 stream
    relying = ("usage.matches", "streaming.no_replacement_char")
    assert {k: v for k, v in not_passed(results).items() if not k.startswith(relying)} == {}


# ---- the same checks against broken servers (tests/broken_servers.py) ------------------------------


def test_every_check_here_is_caught_by_some_broken_server() -> None:
    caught = {check_id for fault in FAULTS for check_id in fault.catches}
    assert set(IDS) <= caught, sorted(set(IDS) - caught)


def test_lone_cr_line_endings_are_fine(server: RunningServer) -> None:
    streaming = [check_id for check_id in IDS if check_id.startswith(("streaming.", "usage.stream"))]
    with broken_server(server.base_url, CR_ONLY, server.api_key) as url:
        results = run_fresh(reference_target(server, base_url=url), streaming)
    assert not not_passed(results)


def test_the_oversized_evidence_stays_small(server: RunningServer) -> None:
    (fault,) = [fault for fault in FAULTS if fault.name == "no_size_cap"]
    with broken_server(server.base_url, fault, server.api_key) as url:
        result = run_fresh(reference_target(server, base_url=url), ["errors.oversized_body"])["errors.oversized_body"]
    assert result.outcome == "failed"
    assert result.curl is not None and len(result.curl) < 4000
    assert "python3 -c" in result.curl and "--data-binary @-" in result.curl
    assert len(json.dumps(result.request)) < 4000


# ---- below HTTP: a raw socket that resets instead of answering ----------------------------------


@contextlib.contextmanager
def resetting_server() -> Iterator[str]:
    """A listener that reads a little of each request, then resets the connection (no answer)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    thread = threading.Thread(target=serve, name="resetting-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_a_reset_instead_of_413_is_caught() -> None:
    with resetting_server() as url:
        target = Target(base_url=url, api_key="any-key", model="any-model", timeout_s=30)
        result = run_fresh(target, ["errors.oversized_body"])["errors.oversized_body"]
    assert result.outcome == "failed", f"{result.outcome}: {result.message}"
    assert "connection was reset" in result.message, result.message
    assert result.curl and url in result.curl, result.curl
    assert result.response_excerpt.startswith("HTTP 0"), result.response_excerpt
