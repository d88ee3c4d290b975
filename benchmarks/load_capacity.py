"""How many SSE token events/s one load worker process handles before its timing degrades.

Two measurements, because on a small machine the mock server (one Python process) runs out of
CPU before the client does:

1. a sweep of concurrent streams against the mock engine (known ITL) on `--server-workers`
   processes sharing the port, so that the server is not capped by one Python process: per step
   the token events/s received, the client's CPU (fraction of one core), the ITL error against
   the truth, and events/s per client CPU-second (what one fully busy core would take at that
   cost per event);
2. the client's per-event cost with no network at all: recorded SSE bytes fed through the same
   code that times real streams (`load.records.StreamTimer`), one line at a time.

    python benchmarks/load_capacity.py --sweep 8,16,32,64 --itl-ms 5 --duration 10 --server-workers 4

With --pin the server runs on CPU 0 and the load tool on CPU 1 (a 2-core machine split in two), and
the levels run one at a time until the client degrades: its ITL p50 off the mock's truth by more
than --max-itl-error-ms, or its event-loop lag p99 past --max-loop-lag-ms. That last good level's
events/s at its client CPU is the client's capacity per core:

    python benchmarks/load_capacity.py --pin --sweep 32,64,128,192,256,320,384 --itl-ms 10 --output-tokens 64
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from load.document import LoadReport
from load.records import RequestRecord, StreamTimer
from reference_server.launcher import running_server

ROOT = Path(__file__).resolve().parent.parent


def parse_cost(events: int = 200, repeats: int = 200) -> float:
    """Token events/s one core parses and stamps (SSE framing, JSON, timestamps), no socket."""
    chunk = ('data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"mock",'
             '"choices":[{"index":0,"delta":{"content":" word"},"logprobs":null,"finish_reason":null}]}\n')
    lines = [chunk.encode(), b"\n"] * events + [b"data: [DONE]\n", b"\n"]
    start = time.perf_counter()
    for _ in range(repeats):
        timer = StreamTimer(RequestRecord(send_ns=0, stream=True))
        for line in lines:
            timer.feed(line, time.perf_counter_ns())
        timer.close(time.perf_counter_ns())
    return events * repeats / (time.perf_counter() - start)


def pin_tree(pid: int, cpus: set[int]) -> None:
    """Put process `pid`, its threads and its child processes on `cpus` (Linux)."""
    children = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()
                and _parent(int(entry.name)) == pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)
    for child in children:
        pin_tree(child, cpus)


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def sweep(levels: str, itl_ms: float, ttft_ms: float, duration: float, output_tokens: int,
          server_workers: int, pin: bool = False) -> list[dict]:
    """One `python -m load` sweep against the mock on `server_workers` processes; per step the
    numbers that matter here. `pin`: the server on CPU 0, the load tool on CPU 1."""
    with tempfile.TemporaryDirectory() as folder, running_server(
            "--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms), "--max-queue", "100000", "--log-level", "WARNING",
            "--workers", str(server_workers), engine="mock") as server:
        if pin:
            pin_tree(server.process.pid, {0})
        command = [sys.executable, "-m", "load", "--quiet", "--base-url", server.base_url, "--api-key",
                   server.api_key or "", "--model", server.model, "--extra-body", '{"logit_bias": {"0": -100}}',
                   "--sweep", levels, "--duration", str(duration), "--output-tokens", str(output_tokens),
                   "--report-dir", folder]
        subprocess.run(command, check=False, cwd=ROOT, stdout=subprocess.DEVNULL,
                       preexec_fn=(lambda: os.sched_setaffinity(0, {1})) if pin else None)
        doc = LoadReport.read(Path(folder) / "load.json")
    rows = []
    for step in doc.steps:
        metrics, cpu = step.metrics, max(step.client.cpu_fraction)
        events = metrics.token_events_per_s
        rows.append({"users": step.spec.users, "events_per_s": events, "client_cpu": cpu,
                     "events_per_client_core_s": events / cpu if cpu else None,
                     "itl_p50_error_ms": metrics.itl_ms.p50 - itl_ms,  # type: ignore[operator]
                     "itl_p99_error_ms": metrics.itl_ms.p99 - itl_ms,  # type: ignore[operator]
                     "loop_lag_p99_ms": step.client.loop_lag_ms.p99, "warnings": step.warnings,
                     "sent_as_asked": step.fidelity is not None and step.fidelity.ok})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", default="8,16,32,64", help="concurrent streams per step")
    parser.add_argument("--itl-ms", type=float, default=5.0, help="mock inter-token gap")
    parser.add_argument("--ttft-ms", type=float, default=20.0, help="mock time to first token")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per step")
    parser.add_argument("--output-tokens", type=int, default=128, help="tokens per request")
    parser.add_argument("--server-workers", type=int, default=1,
                        help="mock server processes sharing the port (reference_server --workers)")
    parser.add_argument("--pin", action="store_true",
                        help="server on CPU 0, load tool on CPU 1; levels one at a time until the client degrades")
    parser.add_argument("--max-itl-error-ms", type=float, default=0.5, help="--pin: degraded past this ITL p50 error")
    parser.add_argument("--max-loop-lag-ms", type=float, default=5.0, help="--pin: degraded past this loop lag p99")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; mock server on {args.server_workers} process(es)")
    print(f"parse-only: {parse_cost():,.0f} token events/s on one core (StreamTimer, no socket)")
    print(f"{'users':>6}{'events/s':>10}{'client CPU':>12}{'events/core-s':>15}{'ITL p50 err':>13}"
          f"{'ITL p99 err':>13}{'loop lag p99':>14}")
    if args.pin:
        rows = []
        for level in args.sweep.split(","):
            rows += sweep(level, args.itl_ms, args.ttft_ms, args.duration, args.output_tokens, args.server_workers,
                          pin=True)
            row = rows[-1]
            print(f"  {level} users: {row['events_per_s']:,.0f} events/s, client CPU {row['client_cpu']:.2f}, "
                  f"ITL p50 error {row['itl_p50_error_ms']:+.3f} ms, loop lag p99 {row['loop_lag_p99_ms']:.2f} ms",
                  flush=True)
            if abs(row["itl_p50_error_ms"]) > args.max_itl_error_ms or row["loop_lag_p99_ms"] > args.max_loop_lag_ms:
                break
    else:
        rows = sweep(args.sweep, args.itl_ms, args.ttft_ms, args.duration, args.output_tokens, args.server_workers)
    for row in rows:
        per_core = row["events_per_client_core_s"]
        print(f"{row['users']:>6}{row['events_per_s']:>10,.0f}{row['client_cpu']:>12.2f}"
              f"{(per_core or 0):>15,.0f}{row['itl_p50_error_ms']:>+13.3f}{row['itl_p99_error_ms']:>+13.3f}"
              f"{row['loop_lag_p99_ms']:>14.2f}")
        for warning in row["warnings"]:
            print(f"       warning: {warning}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
