"""Run checks against a target, with progress on the terminal, into a `RunReport`."""

from __future__ import annotations

import dataclasses
import datetime as dt
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO
from urllib.parse import urlsplit

import requests

import spec
from conformance.context import Context
from conformance.registry import Check, CheckFailed, NotSupported, Skipped
from conformance.target import Client, Exchange, Target
from reports import CheckResult, RunReport
from spec.endpoint import auth_headers

_MARK = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "skipped": "SKIP",
         "not_supported": "N/S"}


# How long a refused connection may come before the embedded server's exit status is readable.
EXIT_STATUS_WAIT_S = 2.0
# A known-good request (the smallest valid one) may take this long, at most the target's timeout;
# after one that did not succeed, it is sent once more this much later before the endpoint is
# called unhealthy (a blip is not a wedge).
PROBE_TIMEOUT_S = 30.0
PROBE_RETRY_AFTER_S = 2.0


class Unreachable(Exception):
    """The endpoint could not be reached at all (exit code 2)."""


def preflight(target: Target) -> None:
    """Fail fast, with one line, when nothing answers HTTP at the base URL."""
    try:
        requests.get(target.models_url, timeout=min(target.timeout_s, 15),
                     headers=auth_headers(target.api_key, dict(target.headers)))
    except requests.RequestException as exc:
        raise Unreachable(f"cannot reach {target.base_url}: {exc.__class__.__name__}: {exc}") from exc


def _evidence(exchange: Exchange | None) -> dict[str, object]:
    if exchange is None:
        return {}
    return {
        "request": {"method": exchange.method, "url": exchange.url, "headers": exchange.headers,
                    "body": exchange.request_json()},
        "response_excerpt": exchange.excerpt(),
        "curl": exchange.curl(),
    }


def run_one(item: Check, ctx: Context) -> CheckResult:
    """Run one check and classify how it ended."""
    start = time.perf_counter()
    before = len(ctx.client.exchanges)
    outcome, message, evidence, cause = "passed", "", {}, None
    if item.feature in ctx.target.skip_features:
        outcome, message = "not_supported", f"feature {item.feature!r} declared unsupported"
    else:
        try:
            item.run(ctx)
        except CheckFailed as exc:
            outcome, message, cause = "failed", exc.message, exc.cause
            evidence = _evidence(exc.exchange or (ctx.last_exchange() if len(ctx.client.exchanges) > before
                                                   else None))
        except NotSupported as exc:
            outcome, message = "not_supported", str(exc)
        except Skipped as exc:
            outcome, message = "skipped", str(exc)
        except requests.RequestException as exc:
            outcome, message = "failed", f"transport error: {exc.__class__.__name__}: {exc}"
            cause = f"transport error: {exc.__class__.__name__}"
            evidence = _evidence(ctx.last_exchange() if len(ctx.client.exchanges) > before else None)
        except Exception as exc:  # a bug in the check itself, or an answer it could not digest
            outcome, message = "error", f"{exc.__class__.__name__}: {exc}"
            evidence = _evidence(ctx.last_exchange() if len(ctx.client.exchanges) > before else None)
    return CheckResult(
        id=item.id, feature=item.feature, category=item.category, outcome=outcome,
        duration_s=round(time.perf_counter() - start, 4), message=message,
        request=evidence.get("request"), response_excerpt=evidence.get("response_excerpt"),
        curl=evidence.get("curl"), spec_note=item.spec_note, severity=item.severity, cause=cause,
    )


def probe(target: Target) -> str | None:
    """What went wrong with the smallest valid chat request (max_tokens 1), or None when it got a 200
    (or a 429/503: the endpoint answers, it only asks the client to slow down)."""
    timeout = min(target.timeout_s, PROBE_TIMEOUT_S)
    client = Client(dataclasses.replace(target, timeout_s=timeout))
    try:
        exchange = client.chat(client.chat_body(max_tokens=1))
    except requests.Timeout:
        return f"timed out after {timeout:g} s"
    except requests.RequestException as exc:
        return f"got no answer ({exc.__class__.__name__})"
    finally:
        client.close()
    # A 429 or 503 is an endpoint pacing its clients (a gateway's rate limit), alive: not a reason to stop.
    return None if exchange.status in (200, 429, 503) else f"was answered HTTP {exchange.status}"


def endpoint_gone(
    target: Target, server_exit: Callable[[], str | None] | None = None, known_good: bool = False
) -> str | None:
    """Why the endpoint has stopped answering (properly), or None while it still does.

    `server_exit` reports how a server this run started has ended (None while it runs). Otherwise
    a refused TCP connection to the base URL's host and port is the sign; a slow or unresolvable
    host is not (those are the checks' own findings). With `known_good` (the smallest valid
    request got a 200 before the run), that request is sent again: when it times out, gets no
    answer or no 200, twice, the endpoint is wedged or unhealthy, and that is the reason (unless
    by then it is gone after all: a dying server may still take a connection or two).
    """
    gone = _gone(target, server_exit)
    if gone is not None or not known_good:
        return gone
    unhealthy = _unhealthy(target)
    if unhealthy is None:
        return None
    return _gone(target, server_exit) or unhealthy


def _gone(target: Target, server_exit: Callable[[], str | None] | None) -> str | None:
    if server_exit is not None and (status := server_exit()) is not None:
        return f"embedded server exited with {status}"
    url = urlsplit(target.base_url)
    host = url.hostname or "127.0.0.1"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=min(target.timeout_s, 10)).close()
    except ConnectionRefusedError:
        pass
    except OSError:
        return None
    else:
        return None
    if server_exit is not None:
        # A dying process closes its sockets before its exit status can be read: wait for it.
        deadline = time.monotonic() + EXIT_STATUS_WAIT_S
        while (status := server_exit()) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if status is not None:
            return f"embedded server exited with {status}"
    return f"connection refused at {host}:{port}"


def _unhealthy(target: Target) -> str | None:
    first = probe(target)
    if first is None:
        return None
    time.sleep(PROBE_RETRY_AFTER_S)
    second = probe(target)
    if second is None:
        return None
    again = "again" if second == first else f"then {second}"
    return f"a minimal request that succeeded before the run {first}, {again}"


def run_checks(
    target: Target,
    checks: Sequence[Check],
    progress: TextIO | None = sys.stderr,
    server_exit: Callable[[], str | None] | None = None,
    fail_on: str = "must",
) -> RunReport:
    """Run `checks` in order; print one line per check to `progress`.

    When the endpoint stops answering (the server this run started has exited, connections are
    refused, or a minimal request that succeeded before the run no longer does, after a check
    that did not pass or that may wedge the endpoint), the run stops there: the report says where
    and why (`aborted`) and lists the checks that did not run, instead of failing each of them.
    `fail_on` is the least severity whose failures fail the run.
    """
    started = dt.datetime.now(dt.UTC)
    ctx = Context(target)
    results: list[CheckResult] = []
    aborted: str | None = None
    width = len(str(len(checks)))
    clock = time.perf_counter()
    baseline = probe(target) if checks else None
    if baseline is not None and progress is not None:
        print(f"note: a minimal request {baseline} before the first check, so a wedged endpoint cannot be told "
              "from failing checks", file=progress, flush=True)
    try:
        for number, item in enumerate(checks, 1):
            result = run_one(item, ctx)
            passed = result.outcome in ("passed", "not_supported", "skipped")
            watch = not passed or item.may_wedge or server_exit is not None
            gone = endpoint_gone(target, server_exit, known_good=baseline is None and (
                not passed or item.may_wedge)) if watch else None
            if gone is not None and not passed:
                result = dataclasses.replace(result, outcome="error", message=(
                    f"the endpoint stopped answering during this check ({gone}): {result.message}"))
            results.append(result)
            if progress is not None:
                mark = _MARK[result.outcome]
                line = (f"[{number:>{width}}/{len(checks)}] {mark:<5} {item.severity:<6} {item.id} "
                        f"({result.duration_s:.2f}s)")
                if result.outcome in ("failed", "error"):
                    line += f"\n      {result.message}"
                print(line, file=progress, flush=True)
            if gone is not None:
                aborted = f"the endpoint stopped answering at check {item.id} ({gone})"
                break
    finally:
        ctx.client.close()
    return RunReport(
        title="chatspec conformance",
        target={"base_url": target.base_url, "chat_url": target.chat_url, "model": target.model,
                "profile": target.profile, "skip_features": sorted(target.skip_features),
                "max_examples": target.max_examples, "seed": target.seed},
        started_at=started.isoformat(timespec="seconds"),
        duration_s=round(time.perf_counter() - clock, 3),
        results=results,
        notes=spec.decisions(),
        aborted=aborted,
        not_run=[item.id for item in checks[len(results):]] if aborted else [],
        fail_on=fail_on,
    )


def summary_line(report: RunReport) -> str:
    """One line with the counts (failures split by severity), for the end of a run."""
    counts = report.counts()
    table = report.by_severity()
    parts = []
    for outcome in _MARK:
        if not counts.get(outcome):
            continue
        part = f"{counts[outcome]} {outcome.replace('_', ' ')}"
        if outcome in ("failed", "error"):
            part += " (" + ", ".join(f"{table[s][outcome]} {s}" for s in table if table[s][outcome]) + ")"
        parts.append(part)
    if report.aborted:
        parts.append(f"{len(report.not_run)} not run")
    line = f"conformance {report.verdict()}: {', '.join(parts) or 'no checks'} in {report.duration_s:.1f}s"
    tolerated = report.tolerated()
    if tolerated:
        line += (f"; {len(tolerated)} should-level failure(s) do not fail the run (--fail-on should makes them)")
    if report.baseline is not None:
        new = sum(1 for r in report.results if r.broken and r.baseline == "new")
        line += f"; baseline {report.baseline}: {len(report.expected())} expected, {new} new failure(s)"
        if report.fixed:
            line += f", fixed: {', '.join(report.fixed)}"
    return line

