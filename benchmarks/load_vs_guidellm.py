"""Our load tool against guidellm on the same mock server: each one's TTFT/ITL error vs the known truth.

Why: `python -m load --calibrate` measures our own error against the mock engine, whose tokens come
at exactly --ttft-ms and then every --itl-ms. An error is only meaningful next to what an established
tool gets on the same workload, so this starts one mock server and runs, one after the other,
`python -m load` and then guidellm (https://github.com/vllm-project/guidellm, installed in its own
virtual environment, never a dependency of this project) with the same closed-loop load: --users
concurrent streams, about --prompt-tokens prompt tokens, --output-tokens output tokens (the mock's
end-of-sequence token is banned with logit_bias so every answer is that long), --duration seconds,
the same warm-up excluded. It prints one row per tool (TTFT and ITL p50/p99, their errors against
the truth, requests completed) and writes the same as JSON.

The two tools do not define ITL the same way (the output says so): ours pools every gap between
consecutive content events of every stream, so its p99 is the p99 of single gaps; guidellm's ITL is
per request, (last token time - first token time) / (output tokens - 1), and its percentiles are
over those per-request means weighted by output tokens - 1, so a tail gap is averaged away.

Caveats the output shows: guidellm runs min(users, 10) worker processes by default (ours: one
process), which on a small machine compete for the cores with the server (--guidellm-processes
changes that); requests still in flight when its time is up are cancelled ("incomplete"), while
ours lets them finish. guidellm sends max_completion_tokens and ignore_eos, which the spec ignores
as unknown properties, so max_tokens and the logit_bias ban are added to its bodies as "extras".

guidellm's synthetic prompts need a Hugging Face tokenizer and this machine has no hub access, so
unless --tokenizer names a local one, a word-level tokenizer over Faker's lorem words (what
guidellm's synthetic text is made of) is built in a temporary folder with guidellm's own Python;
one of its tokens is one whitespace-separated word, which is also one token of the mock engine, so
--prompt-tokens means the same to both tools.

    .venv/bin/python benchmarks/load_vs_guidellm.py --duration 30
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from load.document import LoadReport
from load.prompts import DISTINCT_WORDS
from reference_server.launcher import running_server

API_ROUTE = "v3/openai/chat/completions"  # guidellm joins target + "/" + route
MOCK_EOS_BAN = {"logit_bias": {"0": -100}}  # the mock engine's end-of-sequence token is id 0

ITL_DEFINITIONS = {
    "load": "gap between consecutive content events of one stream; all gaps of all streams pooled, "
            "exact percentiles (numpy, linear)",
    "guidellm": "per request: (last token time - first token time) / (output tokens - 1); percentiles over "
                "those per-request means, weighted by output tokens - 1 (not single gaps)",
}
TTFT_DEFINITIONS = {
    "load": "first SSE event with content - request send time (perf_counter_ns, line stamped when read)",
    "guidellm": "first SSE line with a token - request start (time.time(); start = when httpx begins "
                "sending the request headers)",
}

TOKENIZER_BUILDER = '''
import sys
from faker.providers.lorem.en_US import Provider
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

words = sorted(set(Provider.word_list))
vocab = {"[UNK]": 0}
for word in words + [w.capitalize() for w in words] + list(".,;:!?'\\"-()"):
    vocab.setdefault(word, len(vocab))
tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(sys.argv[1])
'''


def guidellm_python(executable: Path) -> str:
    """The interpreter of guidellm's virtual environment (from the script's #! line)."""
    with executable.open("rb") as handle:
        first = handle.readline().decode(errors="replace").strip()
    if first.startswith("#!") and Path(first[2:].split()[0]).exists():
        return first[2:].split()[0]
    return str(executable.parent / "python")


def build_tokenizer(executable: Path, folder: Path) -> Path:
    """A local word-level Hugging Face tokenizer for guidellm's synthetic prompts (no hub needed)."""
    subprocess.run([guidellm_python(executable), "-c", TOKENIZER_BUILDER, str(folder)], check=True)
    return folder


def run_ours(server: Any, args: argparse.Namespace, report_dir: Path, warmup: float) -> dict[str, Any]:
    """`python -m load` against the server; the measured step's metrics from its load.json."""
    command = [sys.executable, "-m", "load", "--base-url", server.base_url, "--api-key", server.api_key or "",
               "--model", server.model, "--users", str(args.users), "--duration", str(args.duration),
               "--warmup", f"{warmup:g}", "--output-tokens", str(args.output_tokens),
               "--prompt-words", str(args.prompt_tokens), "--extra-body", json.dumps(MOCK_EOS_BAN),
               "--report-dir", str(report_dir), "--quiet"]
    print("$ " + " ".join(command).replace(server.api_key or "\0", "KEY"), flush=True)
    started = time.monotonic()
    subprocess.run(command, check=True)
    wall = time.monotonic() - started
    step = LoadReport.read(report_dir / "load.json").steps[0]
    metrics = step.metrics
    return {
        "tool": "load (ours)",
        "ttft_p50_ms": metrics.ttft_ms.p50, "ttft_p99_ms": metrics.ttft_ms.p99,
        "itl_p50_ms": metrics.itl_ms.p50, "itl_p99_ms": metrics.itl_ms.p99,
        "requests_completed": metrics.requests_ok, "requests_failed": metrics.requests_failed,
        # (E2E - TTFT) / (output tokens - 1) per request: guidellm's ITL definition, but to the last byte
        "tpot_p50_ms": metrics.tpot_ms.p50, "tpot_p99_ms": metrics.tpot_ms.p99,
        "ttft_samples": metrics.ttft_ms.count, "itl_samples": metrics.itl_ms.count,
        "output_tokens_mean": metrics.output_tokens_mean, "prompt_tokens_mean": metrics.prompt_tokens_mean,
        "client_processes": 1, "warnings": step.warnings,
        "wall_s": wall, "report": str(report_dir / "load.json"),
    }


def guidellm_scenario(server: Any, args: argparse.Namespace, tokenizer: Path, results: Path,
                      warmup: float) -> dict[str, Any]:
    """One concurrent benchmark: same users, prompt/output lengths, duration and warm-up as ours."""
    return {
        "metadata": {"labels": {"name": "load_vs_guidellm"}},
        "spec": {
            "backend": {
                "kind": "openai_http", "target": server.base_url, "model": server.model,
                "api_key": server.api_key, "request_format": "/v1/chat/completions",
                "api_routes": {"/v1/chat/completions": API_ROUTE},
                "http2": False,  # plain HTTP/1.1 keep-alive, as ours
                # guidellm sends max_completion_tokens + ignore_eos, which the spec ignores (unknown
                # properties) while it requires max_tokens; extras are merged into every body.
                "extras": {"body": {"max_tokens": args.output_tokens, **MOCK_EOS_BAN}},
            },
            "profile": {"kind": "concurrent", "streams": args.users,
                        "warmup": {"mode": "duration", "value": warmup}},
            "constraints": [{"kind": "max_duration", "seconds": args.duration}],
            "tokenizer": {"kind": "huggingface_auto", "model": str(tokenizer)},
            "data": [{"kind": "synthetic_text", "prompt_tokens": args.prompt_tokens,
                      "output_tokens": args.output_tokens}],
            "outputs": [{"kind": "json", "path": str(results)}],
        },
    }


def run_guidellm(server: Any, args: argparse.Namespace, out_dir: Path, tokenizer: Path,
                 warmup: float) -> dict[str, Any]:
    """guidellm against the server; its successful-request statistics from its results JSON."""
    results = out_dir / "guidellm.json"
    scenario = out_dir / "guidellm_scenario.json"
    scenario.write_text(json.dumps(guidellm_scenario(server, args, tokenizer, results, warmup), indent=2))
    command = [str(args.guidellm), "run", "--scenario", str(scenario), "--disable-console-interactive"]
    env = {**os.environ, "COLUMNS": "200"}
    prefix = ""
    if args.guidellm_processes is not None:  # its default is min(streams, 10) worker processes
        env["GUIDELLM__MAX_WORKER_PROCESSES"] = str(args.guidellm_processes)
        prefix = f"GUIDELLM__MAX_WORKER_PROCESSES={args.guidellm_processes} "
    print("$ " + prefix + " ".join(command) + f"  (log: {out_dir / 'guidellm.log'})", flush=True)
    started = time.monotonic()
    with (out_dir / "guidellm.log").open("wb") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"guidellm exited {done.returncode}; see {out_dir / 'guidellm.log'}")
    bench = json.loads(results.read_text())["benchmarks"][0]
    metrics = bench["metrics"]

    def ok(name: str) -> dict[str, Any]:
        return metrics[name]["successful"]

    totals = metrics["request_totals"]
    return {
        "tool": "guidellm",
        "ttft_p50_ms": ok("time_to_first_token_ms")["percentiles"]["p50"],
        "ttft_p99_ms": ok("time_to_first_token_ms")["percentiles"]["p99"],
        "itl_p50_ms": ok("inter_token_latency_ms")["percentiles"]["p50"],
        "itl_p99_ms": ok("inter_token_latency_ms")["percentiles"]["p99"],
        "requests_completed": totals["successful"], "requests_failed": totals["errored"],
        "requests_incomplete": totals["incomplete"],
        "ttft_samples": ok("time_to_first_token_ms")["count"], "itl_samples": ok("inter_token_latency_ms")["count"],
        "output_tokens_mean": ok("output_token_count")["mean"], "prompt_tokens_mean": ok("prompt_token_count")["mean"],
        "client_processes": bench["scheduler_state"].get("num_processes"),
        "warnings": [w.get("code", str(w)) if isinstance(w, dict) else str(w) for w in bench.get("warnings", [])],
        "wall_s": wall, "report": str(results),
    }


def add_errors(row: dict[str, Any], ttft_ms: float, itl_ms: float) -> None:
    """Measured minus true, in ms, for each percentile."""
    for metric, truth in (("ttft", ttft_ms), ("itl", itl_ms)):
        for pct in ("p50", "p99"):
            value = row[f"{metric}_{pct}_ms"]
            row[f"{metric}_{pct}_error_ms"] = None if value is None else value - truth


def print_table(rows: list[dict[str, Any]], ttft_ms: float, itl_ms: float) -> None:
    def cell(value: Any, signed: bool = False) -> str:
        if value is None:
            return "-"
        return f"{value:+.3f}" if signed else f"{value:.3f}"

    print(f"\ntruth: TTFT {ttft_ms:g} ms, ITL {itl_ms:g} ms (mock engine); errors = measured - truth, in ms")
    header = (f"{'tool':<12}{'TTFT p50':>10}{'err':>9}{'TTFT p99':>10}{'err':>9}{'ITL p50':>9}{'err':>9}"
              f"{'ITL p99':>9}{'err':>9}{'completed':>11}{'failed':>8}{'out tok':>9}{'procs':>7}")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['tool']:<12}{cell(row['ttft_p50_ms']):>10}{cell(row['ttft_p50_error_ms'], True):>9}"
              f"{cell(row['ttft_p99_ms']):>10}{cell(row['ttft_p99_error_ms'], True):>9}"
              f"{cell(row['itl_p50_ms']):>9}{cell(row['itl_p50_error_ms'], True):>9}"
              f"{cell(row['itl_p99_ms']):>9}{cell(row['itl_p99_error_ms'], True):>9}"
              f"{row['requests_completed']:>11}{row['requests_failed']:>8}{row['output_tokens_mean'] or 0:>9.1f}"
              f"{row['client_processes'] or '-':>7}")
    for row in rows:
        if row["warnings"]:
            print(f"{row['tool']} warnings: {'; '.join(row['warnings'])}")
    print("\nITL is not defined the same way by the two tools:")
    print(f"  load:     {ITL_DEFINITIONS['load']}")
    print(f"  guidellm: {ITL_DEFINITIONS['guidellm']}")
    print("  so guidellm's ITL p99 is the p99 of per-request mean gaps and cannot show a slow single gap.")
    ours = next((row for row in rows if row.get("tpot_p50_ms") is not None), None)
    if ours:
        print(f"  like-for-like: our TPOT, (E2E - TTFT) / (output tokens - 1) per request, is p50 "
              f"{ours['tpot_p50_ms']:.3f} ({ours['tpot_p50_ms'] - itl_ms:+.3f}), p99 {ours['tpot_p99_ms']:.3f} "
              f"({ours['tpot_p99_ms'] - itl_ms:+.3f}) ms")
    print("TTFT:")
    print(f"  load:     {TTFT_DEFINITIONS['load']}")
    print(f"  guidellm: {TTFT_DEFINITIONS['guidellm']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--guidellm", type=Path, default=Path("/tmp/gvenv/bin/guidellm"),
                        help="guidellm executable (its own venv; default: %(default)s)")
    parser.add_argument("--users", type=int, default=32, help="concurrent streams (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per tool (default: %(default)s)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds at the start not measured, both tools (default: 10%% of --duration, <= 10)")
    parser.add_argument("--prompt-tokens", type=int, default=32,
                        help="prompt length in mock tokens = words (default: %(default)s)")
    parser.add_argument("--output-tokens", type=int, default=64, help="output tokens (default: %(default)s)")
    parser.add_argument("--ttft-ms", type=float, default=100.0, help="mock time to first token (default: %(default)s)")
    parser.add_argument("--itl-ms", type=float, default=10.0, help="mock gap between tokens (default: %(default)s)")
    parser.add_argument("--guidellm-processes", type=int, default=None,
                        help="GUIDELLM__MAX_WORKER_PROCESSES (default: guidellm's own, min(users, 10))")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="local Hugging Face tokenizer folder for guidellm (default: build a word-level one)")
    parser.add_argument("--out-dir", type=Path, default=Path("out/load_vs_guidellm"),
                        help="where reports and the summary JSON go (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.prompt_tokens < DISTINCT_WORDS:
        parser.error(f"--prompt-tokens must be >= {DISTINCT_WORDS}: our synthetic prompts have at least that "
                     "many words (load/prompts.py), so the two tools would not send the same length")
    if not args.guidellm.exists():
        parser.error(f"guidellm not found at {args.guidellm} (install it in its own venv, pass --guidellm)")
    warmup = min(10.0, 0.1 * args.duration) if args.warmup is None else args.warmup
    out_dir = args.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="guidellm-tokenizer-") as tmp:
        tokenizer = args.tokenizer.resolve() if args.tokenizer else build_tokenizer(args.guidellm, Path(tmp))
        with running_server("--ttft-ms", str(args.ttft_ms), "--itl-ms", str(args.itl_ms), "--max-queue", "100000",
                            "--log-level", "WARNING", engine="mock") as server:
            ours = run_ours(server, args, out_dir / "load", warmup)
            time.sleep(2.0)  # let the server go idle between the tools
            theirs = run_guidellm(server, args, out_dir, tokenizer, warmup)
    rows = [ours, theirs]
    for row in rows:
        add_errors(row, args.ttft_ms, args.itl_ms)
    print_table(rows, args.ttft_ms, args.itl_ms)
    summary = {
        "title": "load vs guidellm on the mock engine",
        "truth": {"ttft_ms": args.ttft_ms, "itl_ms": args.itl_ms},
        "workload": {"users": args.users, "duration_s": args.duration, "warmup_s": warmup,
                     "prompt_tokens": args.prompt_tokens, "output_tokens": args.output_tokens,
                     "stream": True, "extra_body": MOCK_EOS_BAN, "order": "load first, then guidellm, same server",
                     "guidellm_max_worker_processes": args.guidellm_processes},
        "definitions": {"ttft": TTFT_DEFINITIONS, "itl": ITL_DEFINITIONS},
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "results": rows,
    }
    path = out_dir / "load_vs_guidellm.json"
    path.write_text(json.dumps(summary, indent=2))
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
