"""Does the load tool send every request asked for, when asked? Measured at the endpoint, at length.

The mock engine records every request it receives (`--record`: arrival time, body, answer id), so
the count and the timing are judged by what the server saw, not by the tool's own counters:

- `trace`: a generated bursty Mooncake-layout trace (bursts of Poisson arrivals at changing rates,
  idle gaps of several seconds between them) replayed at --speed: the server must receive exactly
  its rows; each arrival's error is its arrival minus its row's time (clocks aligned on the
  earliest request, since none can arrive early);
- `poisson`: open loop at each of --rates for --duration seconds: the server's count against the
  expected rate x duration (and exactly the slots the tool scheduled), arrival error p99 against
  each request's intended time.

Arrivals are joined to the tool's requests.jsonl by the answer's id. Results go to stdout and, with
--json, to a file; docs/benchmarks.md records them (command, machine, date).

    python benchmarks/load_fidelity.py trace --requests 3000 --span 330
    python benchmarks/load_fidelity.py poisson --rates 10,50,200 --duration 120
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from load.document import LoadReport, StepRecord
from reference_server.launcher import running_server

ROOT = Path(__file__).resolve().parent.parent
EXACT = '{"logit_bias": {"0": -100}}'  # the mock never ends early: every answer is max_tokens long


def bursty_trace(requests: int, span_s: float, seed: int) -> list[dict[str, Any]]:
    """A Mooncake-layout trace: bursts of Poisson arrivals (2-40 requests/s, 2-12 s long) separated
    by idle gaps of 3-8 s, scaled so that `requests` rows span `span_s` seconds; prompts of 30-400
    tokens sharing one of 8 leading blocks, answers of 4-48 tokens."""
    rng = random.Random(seed)
    times: list[float] = []
    t = 0.0
    while len(times) < requests:
        rate, length = rng.uniform(2, 40), rng.uniform(2, 12)
        end = t + length
        while t < end and len(times) < requests:
            times.append(t)
            t += rng.expovariate(rate)
        t = end + rng.uniform(3, 8)
    scale = span_s / times[-1]
    return [{"timestamp": round(at * scale * 1000, 3), "input_length": rng.randint(30, 400),
             "output_length": rng.randint(4, 48), "hash_ids": [rng.randrange(8), 1000 + i]}
            for i, at in enumerate(times)]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_load(server: Any, record: Path, report: Path, *args: str) -> tuple[int, LoadReport, list[dict], list[dict]]:
    """One `python -m load` run; (exit code, load.json, requests.jsonl lines, the server's records
    of the run's streamed requests)."""
    before = len(read_jsonl(record)) if record.exists() else 0
    command = [sys.executable, "-m", "load", "--quiet", "--base-url", server.base_url, f"--api-key={server.api_key}",
               "--model", server.model, "--extra-body", EXACT, "--report-dir", str(report), *args]
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    print(f"  ran in {time.monotonic() - started:.0f} s, exit {result.returncode}", flush=True)
    if result.returncode not in (0, 2):
        sys.exit(f"load run failed:\n{result.stderr[-3000:]}")
    time.sleep(0.5)  # the last answer's record is written as its answer ends
    seen = [r for r in read_jsonl(record)[before:] if isinstance(r.get("body"), dict) and r["body"].get("stream")]
    doc = LoadReport.read(report / "load.json")
    return result.returncode, doc, read_jsonl(report / "requests.jsonl"), seen


def arrival_errors_ms(requests: list[dict], seen: list[dict]) -> np.ndarray:
    """Each request's arrival at the server minus its intended time (ms), joined by answer id; the
    clocks aligned so that the earliest request is 0 late."""
    arrival = {r["response_id"]: r["arrival_ns"] for r in seen if r.get("response_id")}
    pairs = [(arrival[r["request_id"]], round(r["intended_s"] * 1e9)) for r in requests
             if r.get("request_id") in arrival and r.get("intended_s") is not None]
    if not pairs:
        return np.empty(0)
    offset = min(a - i for a, i in pairs)
    return np.array([(a - i - offset) / 1e6 for a, i in pairs])


def summary(errors_ms: np.ndarray) -> dict[str, float | None]:
    if not errors_ms.size:
        return {"p50": None, "p99": None, "max": None}
    p50, p99 = np.percentile(errors_ms, [50, 99])
    return {"p50": round(float(p50), 3), "p99": round(float(p99), 3), "max": round(float(errors_ms.max()), 3)}


def fidelity_fields(step: StepRecord, names: tuple[str, ...]) -> dict[str, Any]:
    """The named fields of the step's fidelity (the tool's own counts)."""
    return {name: getattr(step.fidelity, name, None) for name in names}


def send_lag(step: StepRecord) -> dict[str, Any]:
    """The tool's own send lag (ms) at p50, p99 and max; None where it measured none."""
    lag = step.metrics.send_lag_ms
    return {key: lag.stat(key) if lag is not None else None for key in ("p50", "p99", "max")}


def trace_case(args: argparse.Namespace, server: Any, record: Path, folder: Path) -> dict[str, Any]:
    rows = bursty_trace(args.requests, args.span, args.seed)
    trace = folder / "trace.jsonl"
    trace.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"trace: {len(rows)} rows over {rows[-1]['timestamp'] / 1000:.0f} s at speed {args.speed:g}", flush=True)
    code, doc, requests, seen = run_load(server, record, folder / "trace-report", "--workload", "trace",
                                         "--trace", str(trace), "--trace-speed", str(args.speed),
                                         "--workers", str(args.workers))
    step = doc.steps[0]
    planned = sorted(r["intended_s"] for r in requests)
    asked = sorted((r["timestamp"] - rows[0]["timestamp"]) / 1000 / args.speed for r in rows)
    plan_error_ms = max((abs(a - b) * 1e3 for a, b in zip(planned, asked, strict=False)), default=None)
    errors = arrival_errors_ms(requests, seen)
    return {"case": "trace", "rows": len(rows), "span_s": round(asked[-1], 1), "speed": args.speed,
            "server_received": len(seen), "exact": len(seen) == len(rows), "exit": code,
            "tool": fidelity_fields(step, ("asked", "scheduled", "sent", "done", "end", "ok")),
            "plan_vs_trace_max_ms": plan_error_ms, "arrival_error_ms": summary(errors), "joined": int(errors.size),
            "tool_send_lag_ms": send_lag(step)}


def poisson_case(args: argparse.Namespace, server: Any, record: Path, folder: Path, rate: float) -> dict[str, Any]:
    print(f"poisson {rate:g}/s for {args.duration:g} s", flush=True)
    code, doc, requests, seen = run_load(server, record, folder / f"poisson-{rate:g}", "--rate", str(rate),
                                         "--arrival", "poisson", "--duration", str(args.duration), "--warmup", "0",
                                         "--output-tokens", str(args.output_tokens), "--workers", str(args.workers))
    step = doc.steps[0]
    expected = rate * args.duration
    errors = arrival_errors_ms(requests, seen)
    return {"case": "poisson", "rate": rate, "duration_s": args.duration, "expected": expected,
            "expected_sd": round(math.sqrt(expected), 1), "server_received": len(seen),
            "z": round((len(seen) - expected) / math.sqrt(expected), 2), "exit": code,
            "tool": fidelity_fields(step, ("scheduled", "missed", "sent", "done", "end", "ok")),
            "exact_vs_scheduled": step.fidelity is not None and len(seen) == step.fidelity.scheduled,
            "arrival_error_ms": summary(errors), "joined": int(errors.size),
            "tool_send_lag_ms": send_lag(step)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=("trace", "poisson", "all"))
    parser.add_argument("--requests", type=int, default=3000, help="trace: rows")
    parser.add_argument("--span", type=float, default=330.0, help="trace: seconds from first to last row")
    parser.add_argument("--speed", type=float, default=1.0, help="trace: replay speed")
    parser.add_argument("--rates", default="10,50,200", help="poisson: requests/s, one run each")
    parser.add_argument("--duration", type=float, default=120.0, help="poisson: seconds per rate")
    parser.add_argument("--output-tokens", type=int, default=16, help="poisson: tokens per answer")
    parser.add_argument("--workers", type=int, default=1, help="load worker processes")
    parser.add_argument("--ttft-ms", type=float, default=20.0)
    parser.add_argument("--itl-ms", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; mock TTFT {args.ttft_ms:g} ms, ITL {args.itl_ms:g} ms", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        record = folder / "record.jsonl"
        with running_server("--ttft-ms", str(args.ttft_ms), "--itl-ms", str(args.itl_ms), "--max-queue", "100000",
                            "--log-level", "WARNING", "--record", str(record), engine="mock") as server:
            if args.case in ("trace", "all"):
                results.append(trace_case(args, server, record, folder))
                print(json.dumps(results[-1]), flush=True)
            if args.case in ("poisson", "all"):
                for rate in (float(r) for r in args.rates.split(",")):
                    results.append(poisson_case(args, server, record, folder, rate))
                    print(json.dumps(results[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
