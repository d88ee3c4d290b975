"""How the reference server holds up under hostile clients; figures go to docs/reliability.md.

    python benchmarks/reliability.py flood --requests 2000          # mock engine, started here
    python benchmarks/reliability.py flood --base-url URL --model M --api-key K
    python benchmarks/reliability.py soak --engine llamacpp --minutes 10       # and --engine mock
    python benchmarks/reliability.py storm --engine llamacpp --requests 200

flood: every hostile body of `conformance.hostile` (deep nesting, huge strings, NaN/Infinity,
invalid UTF-8, lone surrogates, duplicate keys, huge integers, a wrong type in every field,
schemathesis negative examples), cycled to --requests, plus raw-socket faults (a body shorter than
its Content-Length then closed, headers and no body, a body longer than its Content-Length, a
slow body sender, a slow header sender). Rules: no 5xx; every 4xx in the error envelope naming
the parameter where one is to blame; after every 100 requests a good request is served; the slow
senders do not delay good requests, and the body timeout ends the slow body.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import platform
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conformance.hostile import envelope_problem, hostile_stream  # noqa: E402
from load.document import LoadReport  # noqa: E402
from reference_server.counts import counts_since, server_counts  # noqa: E402
from reference_server.engines.registry import engine_names  # noqa: E402
from reference_server.launcher import running_server  # noqa: E402

CHAT = "/v3/openai/chat/completions"
CONTENT_EVENT = re.compile(rb'"content":\s?"(?!")')  # a chunk that carries text (not the role chunk's "")


@dataclass
class FloodResult:
    requests: int = 0
    by_family: collections.Counter[str] = field(default_factory=collections.Counter)
    by_status: collections.Counter[int] = field(default_factory=collections.Counter)
    problems: list[dict[str, Any]] = field(default_factory=list)
    alive_checks: int = 0
    alive_failures: int = 0
    raw: dict[str, str] = field(default_factory=dict)
    good_latency_ms: dict[str, float] = field(default_factory=dict)

    def ok(self) -> bool:
        return not self.problems and not self.alive_failures and all(v.startswith("ok") for v in self.raw.values())

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "by_family": dict(self.by_family),
                "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
                "problems": self.problems[:50], "problem_count": len(self.problems),
                "alive_checks": self.alive_checks, "alive_failures": self.alive_failures, "raw": self.raw,
                "good_latency_ms": self.good_latency_ms, "ok": self.ok()}


def good_body(model: str) -> dict[str, Any]:
    return {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "Say hi."}]}


def _raw_exchange(host: str, port: int, payload: bytes, *, wait_s: float, close_at_once: bool = False
                  ) -> tuple[bytes, float]:
    """Send raw bytes; read what comes back for up to wait_s (or close at once); (reply, s to first byte)."""
    start = time.monotonic()
    first = float("nan")
    with socket.create_connection((host, port), timeout=wait_s) as sock:
        sock.sendall(payload)
        if close_at_once:
            return b"", first
        chunks = []
        deadline = start + wait_s
        with contextlib.suppress(TimeoutError, ConnectionError):
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                data = sock.recv(65536)
                if not data:
                    break
                if not chunks:
                    first = time.monotonic() - start
                chunks.append(data)
        return b"".join(chunks), first


def _statuses(reply: bytes) -> list[int]:
    out = []
    for part in re.split(rb"HTTP/1\.[01] ", reply)[1:]:
        with contextlib.suppress(ValueError):
            out.append(int(part[:3]))
    return out


def raw_faults(base_url: str, key: str | None, model: str, body_timeout_s: float) -> dict[str, str]:
    """Each raw-socket fault and what the server did ('ok: ...' when it did the right thing)."""
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = json.dumps(good_body(model)).encode()
    head = f"POST {CHAT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{auth}".encode()
    out: dict[str, str] = {}

    def alive() -> bool:
        return requests.post(base_url + CHAT, json=good_body(model), headers=headers, timeout=30).status_code == 200

    _raw_exchange(host, port, head + f"Content-Length: {len(body) + 50}\r\n\r\n".encode() + body, wait_s=5,
                  close_at_once=True)
    out["body_shorter_than_content_length_then_closed"] = (
        "ok: the next request is served" if alive() else "the server stopped serving")

    reply, first = _raw_exchange(host, port, head + b"Content-Length: 200\r\n\r\n", wait_s=body_timeout_s + 10)
    statuses = _statuses(reply)
    out["headers_then_no_body"] = (f"ok: HTTP 408 after {first:.1f} s" if statuses == [408]
                                   else f"HTTP {statuses} after {first:.1f} s: {reply[:160]!r}")

    reply, _ = _raw_exchange(host, port, head + b"Content-Length: 5\r\n\r\n" + body, wait_s=3)
    statuses = _statuses(reply)
    # The bytes past Content-Length are not an HTTP request: aiohttp's own parser answers them (400,
    # text/plain: the app never sees them, so no envelope) and closes the connection.
    out["body_longer_than_content_length"] = (
        f"ok: HTTP {statuses}" if statuses and all(400 <= s < 500 for s in statuses) else f"HTTP {statuses}")
    return out


def slow_senders(base_url: str, key: str | None, model: str, seconds: float) -> dict[str, float]:
    """Good-request latency (ms, median) while a slow body and a slow header sender hold connections."""
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    stop = threading.Event()
    ended: dict[str, float] = {}

    def trickle(name: str, prefix: bytes, tail: bytes) -> None:
        start = time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=seconds + 60) as sock:
                sock.sendall(prefix)
                for byte in tail:
                    if stop.is_set():
                        break
                    sock.sendall(bytes([byte]))
                    time.sleep(1.0)
                ended[name] = time.monotonic() - start
        except OSError:
            ended[name] = time.monotonic() - start

    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    body = json.dumps(good_body(model)).encode()
    head = (f"POST {CHAT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{auth}"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    threads = [threading.Thread(target=trickle, args=("slow_body", head, body), daemon=True),
               threading.Thread(target=trickle, args=("slow_headers", b"", head), daemon=True)]
    for thread in threads:
        thread.start()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.perf_counter()
        response = requests.post(base_url + CHAT, json=good_body(model), headers=headers, timeout=30)
        latencies.append((time.perf_counter() - start) * 1000)
        if response.status_code != 200:
            latencies.append(float("inf"))
        time.sleep(0.2)
    stop.set()
    return {"good_p50_ms": statistics.median(latencies), "good_max_ms": max(latencies),
            "good_requests": len(latencies), **{f"{k}_ended_after_s": v for k, v in ended.items()}}


def flood(base_url: str, key: str | None, model: str, total: int, seed: int, body_timeout_s: float,
          slow_seconds: float, progress: bool = True) -> FloodResult:
    result = FloodResult()
    session = requests.Session()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    for number, item in enumerate(hostile_stream(model, total, seed=seed), 1):
        try:
            response = session.post(base_url + CHAT, data=item.body, headers=headers, timeout=120)
            status, content = response.status_code, response.content
        except requests.RequestException as exc:
            status, content = 0, str(exc).encode()
        result.requests += 1
        result.by_family[item.family] += 1
        result.by_status[status] += 1
        problem = "no answer" if status == 0 else envelope_problem(status, content, item)
        if problem:
            result.problems.append({"family": item.family, "problem": problem, "body": item.body[:200].decode(
                "utf-8", "backslashreplace")})
        if number % 100 == 0:
            result.alive_checks += 1
            alive = session.post(base_url + CHAT, json=good_body(model), headers=headers, timeout=120)
            result.alive_failures += alive.status_code != 200
            if progress:
                print(f"{number}/{total} sent, {len(result.problems)} problems, alive check "
                      f"{alive.status_code}", file=sys.stderr, flush=True)
    result.raw = raw_faults(base_url, key, model, body_timeout_s)
    if slow_seconds > 0:
        result.good_latency_ms = slow_senders(base_url, key, model, slow_seconds)
    return result


def _health(base_url: str) -> dict[str, Any]:
    return requests.get(base_url + "/health", timeout=10).json()


def storm(base_url: str, key: str | None, model: str, requests_total: int, concurrency: int, seed: int,
          eos_ban: dict[str, int]) -> dict[str, Any]:
    """Streamed requests whose clients vanish: before the first byte (some while queued) or after k tokens.

    Afterwards: how long until /health shows nothing in flight and the engine idle, how many tokens
    the engine generated that no client read, and whether the next request is served. What each
    client saw when it closed (no byte, headers only, or tokens) and what the server counted
    (/metrics) are reported beside the plan: the plan says what was tried, not what happened.
    """
    import random
    from concurrent.futures import ThreadPoolExecutor

    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    rng = random.Random(seed)
    # Before the first byte: gone within 15 ms of sending (before any engine's first token; on a
    # busy server, while still queued). After k tokens: read k content events, then gone.
    plans = [("before_first_byte", rng.uniform(0, 0.015)) if rng.random() < 0.25 else ("after_tokens",
                                                                                         rng.randint(1, 30))
             for _ in range(requests_total)]
    read_tokens = [0] * requests_total
    saw: list[str | None] = [None] * requests_total  # what the client had received when it closed
    closed_at = [0.0] * requests_total
    client_errors: list[str] = []  # a client's own socket error (e.g. no byte for 120 s): a finding, not a crash

    def one(index: int) -> None:
        mode, amount = plans[index]
        body = json.dumps({"model": model, "stream": True, "max_tokens": 64, "logit_bias": eos_ban,
                           "messages": [{"role": "user", "content": f"Tell story number {index}."}]}).encode()
        head = (f"POST {CHAT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{auth}"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        try:
            sock = socket.create_connection((host, port), timeout=120)
        except OSError as exc:
            client_errors.append(f"request {index}: connect: {exc!r}")
            closed_at[index] = time.monotonic()
            return
        buffer = b""
        try:
            sock.sendall(head + body)
            if mode == "before_first_byte":
                time.sleep(amount)
            while read_tokens[index] < (amount if mode == "after_tokens" else 0):
                data = sock.recv(65536)
                if not data:
                    return
                buffer += data
                read_tokens[index] = len(CONTENT_EVENT.findall(buffer))
        except OSError as exc:
            client_errors.append(f"request {index} ({mode} {amount}): {exc!r}")
        finally:
            with contextlib.suppress(OSError):  # what had arrived unread by the time it closed (no wait)
                sock.setblocking(False)
                buffer += sock.recv(65536, socket.MSG_PEEK)
            saw[index] = "tokens" if read_tokens[index] else "headers_only" if buffer else "no_byte"
            sock.close()
            closed_at[index] = time.monotonic()

    before = _health(base_url)["engine"].get("tokens_generated", 0)
    counted_before = server_counts(base_url)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(requests_total)))
    last_close = max(closed_at)
    while True:
        health = _health(base_url)
        engine = health.get("engine", {})
        if health["in_flight"] == 0 and not engine.get("running") and not engine.get("waiting"):
            break
        if time.monotonic() - last_close > 60:
            break
        time.sleep(0.005)
    idle_after = time.monotonic() - last_close
    generated_at_idle = health["engine"].get("tokens_generated", 0)
    time.sleep(2.0)
    generated_later = _health(base_url)["engine"].get("tokens_generated", 0)
    counted = counts_since(counted_before, server_counts(base_url))  # before the next request adds to it
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    after = requests.post(base_url + CHAT, json=good_body(model), headers=headers, timeout=120)
    delivered = sum(read_tokens)
    generated = counted["generation_tokens"]  # the server's own count (/health's engine figure beside it)
    return {"requests": requests_total, "concurrency": concurrency,
            "planned": dict(collections.Counter(mode for mode, _ in plans)),
            "clients_saw": {kind: saw.count(kind) for kind in ("no_byte", "headers_only", "tokens")},
            "server_counted": counted,
            "idle_after_last_close_s": round(idle_after, 4), "in_flight_at_end": health["in_flight"],
            "engine_at_end": health.get("engine", {}), "tokens_read_by_clients": delivered,
            "tokens_generated": generated, "engine_tokens_generated": generated_at_idle - before,
            "tokens_no_client_read": generated - delivered,
            "tokens_no_client_read_per_request": round((generated - delivered) / requests_total, 2),
            "tokens_generated_while_idle": generated_later - generated_at_idle,
            "next_request_status": after.status_code, "client_errors": client_errors}


def rss_kib(pid: int) -> int | None:
    """Resident memory of a process (Linux /proc), KiB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


BAD_KINDS = ("connection_refused", "connection_closed", "timeout", "transport", "http_4xx", "http_5xx",
             "truncated_stream", "error_event", "protocol", "other")


def soak(engine: str, minutes: int, users: int, max_queue: int, output_tokens: int, report_dir: Path,
         step_s: float = 60.0, sample_every_s: float = 10.0) -> dict[str, Any]:
    """`minutes` closed-loop steps of `step_s` at `users` (past --max-queue: the queue stays full).

    Judged: only successes and well-formed 429s (Retry-After, envelope), by the server's own
    /metrics counts as well as the load tool's; the load run's exit status; the server's RSS, sampled
    every `sample_every_s`, after the first step within 10% of its size then; E2E p99 of the last
    step within 20% of the second. (Tests shrink the steps; the benchmark runs minutes.)
    """
    server_args = ["--max-queue", str(max_queue), "--log-level", "WARNING"]
    if engine == "mock":
        server_args += ["--ttft-ms", "20", "--itl-ms", "5"]
    samples: list[tuple[float, int]] = []
    with running_server(*server_args, engine=engine, startup_timeout_s=300) as server:
        stop = threading.Event()
        start = time.monotonic()

        def sample() -> None:
            while not stop.is_set():
                value = rss_kib(server.process.pid)
                if value is not None:
                    samples.append((round(time.monotonic() - start, 1), value))
                stop.wait(sample_every_s)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        counted_before = server_counts(server.base_url)
        command = [sys.executable, "-m", "load", "--base-url", server.base_url, "--api-key", server.api_key or "",
                   "--model", server.model, "--sweep", ",".join([str(users)] * minutes), "--duration", str(step_s),
                   "--warmup", "0", "--output-tokens", str(output_tokens), "--report-dir", str(report_dir),
                   "--quiet"]
        load = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        stop.set()
        sampler.join()
        counted = counts_since(counted_before, server_counts(server.base_url))
        exit_status = server.exit_status()
    steps = LoadReport.read(report_dir / "load.json").steps
    kinds: collections.Counter[str] = collections.Counter()
    for step in steps:
        kinds.update(step.metrics.errors_by_kind)
    ok = sum(step.metrics.requests_ok for step in steps)
    after_first = [kib for t, kib in samples if t >= step_s]
    base = after_first[0] if after_first else None
    growth = (max(after_first) / base - 1) if base else None
    p99 = [step.metrics.e2e_ms.p99 for step in steps]
    drift = (p99[-1] / p99[1] - 1) if len(p99) >= 2 and p99[1] else None
    codes = counted["responses_by_code"]
    # Each rule by what the server counted (/metrics) and by what the load tool's clients saw: a
    # Retry-After header or a stream's end is seen only by a client, a 5xx or a half answer also by
    # the server. The load tool drains the requests in flight at each step's end, so every answer
    # the server began (a 200) must have been answered in full.
    rules = {
        "only successes and well-formed 429s": not any(kinds[k] for k in BAD_KINDS)
        and not sum(step.metrics.http_429_without_retry_after for step in steps)
        and set(codes) <= {"200", "429"},
        "no 5xx": not kinds["http_5xx"] and not any(code.startswith("5") for code in codes),
        "no lost or truncated stream": not (kinds["truncated_stream"] or kinds["connection_closed"]
                                            or kinds["timeout"] or kinds["protocol"])
        and counted["answered_in_full"] == codes.get("200", 0),
        "the load run exited 0": load.returncode == 0,
        "RSS growth after the first minute < 10%": growth is not None and growth < 0.10,
        "E2E p99 of the last minute within 20% of the second": drift is not None and abs(drift) <= 0.20,
        "server alive at the end": exit_status is None,
    }
    return {"engine": engine, "minutes": minutes, "users": users, "max_queue": max_queue, "load_exit": load.returncode,
            "load_stderr": load.stderr[-2000:], "server_counted": counted,
            "requests_ok": ok, "errors_by_kind": dict(kinds), "rss_kib": samples,
            "rss_growth_after_first_minute": growth, "e2e_p99_ms_per_minute": p99, "p99_last_vs_second": drift,
            "output_tokens_per_s_per_minute": [step.metrics.output_tokens_per_s for step in steps],
            "rules": rules, "ok": all(rules.values())}


@contextlib.contextmanager
def target(args: argparse.Namespace) -> Iterator[tuple[str, str | None, str]]:
    if args.base_url:
        yield args.base_url.rstrip("/"), args.api_key, args.model
        return
    with running_server("--ttft-ms", "0", "--itl-ms", "0", "--body-timeout", str(args.body_timeout),
                        engine=args.engine, startup_timeout_s=300) as server:
        yield server.base_url, server.api_key, server.model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("flood", help="hostile requests, raw-socket faults and slow senders")
    f.add_argument("--requests", type=int, default=2000)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--engine", choices=engine_names(startable_bare=True), default="mock",
                   help="the server started here")
    f.add_argument("--base-url", default=None, help="an endpoint already running (the /v3/openai API)")
    f.add_argument("--api-key", default=None)
    f.add_argument("--model", default="mock")
    f.add_argument("--body-timeout", type=float, default=5.0, help="the started server's --body-timeout")
    f.add_argument("--slow-seconds", type=float, default=15.0, help="how long the slow senders run")
    f.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    t = sub.add_parser("storm", help="streamed requests whose clients vanish mid-way")
    t.add_argument("--engine", choices=engine_names(startable_bare=True), default="llamacpp")
    t.add_argument("--requests", type=int, default=200)
    t.add_argument("--concurrency", type=int, default=24)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    k = sub.add_parser("soak", help="minutes at saturation: only successes and 429s, flat memory and latency")
    k.add_argument("--engine", choices=engine_names(startable_bare=True), default="mock")
    k.add_argument("--minutes", type=int, default=10)
    k.add_argument("--users", type=int, default=None, help="closed-loop users (default: max-queue + 4)")
    k.add_argument("--max-queue", type=int, default=12)
    k.add_argument("--output-tokens", type=int, default=32)
    k.add_argument("--report-dir", type=Path, default=Path("out/soak"))
    k.add_argument("--step-seconds", type=float, default=60.0, help="length of each judged step (a minute)")
    k.add_argument("--sample-seconds", type=float, default=10.0, help="how often the server's RSS is read")
    k.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "storm":
        server_args = ("--ttft-ms", "20", "--itl-ms", "10") if args.engine == "mock" else ()
        ban = {"0": -100} if args.engine == "mock" else {"0": -100, "2": -100}
        with running_server(*server_args, "--max-queue", "1000", engine=args.engine,
                            startup_timeout_s=300) as server:
            doc = storm(server.base_url, server.api_key, server.model, args.requests, args.concurrency, args.seed,
                        ban)
        print(json.dumps(doc, indent=1))
        if args.out:
            args.out.write_text(json.dumps(doc, indent=1))
        return 0 if (doc["in_flight_at_end"] == 0 and doc["next_request_status"] == 200
                     and not doc["client_errors"]) else 1
    if args.command == "soak":
        args.report_dir.mkdir(parents=True, exist_ok=True)
        doc = soak(args.engine, args.minutes, args.users or args.max_queue + 4, args.max_queue, args.output_tokens,
                   args.report_dir, step_s=args.step_seconds, sample_every_s=args.sample_seconds)
        print(json.dumps({k: v for k, v in doc.items() if k != "rss_kib"}, indent=1))
        if args.out:
            args.out.write_text(json.dumps(doc, indent=1))
        return 0 if doc["ok"] else 1
    started = time.monotonic()
    with target(args) as (base_url, key, model):
        result = flood(base_url, key, model, args.requests, args.seed, args.body_timeout, args.slow_seconds)
    doc = {"machine": f"{platform.machine()}, Python {platform.python_version()}",
           "seconds": round(time.monotonic() - started, 1), **result.to_dict()}
    print(json.dumps(doc, indent=1))
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1))
    return 0 if result.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
