"""The llama.cpp engine in process, without HTTP: output tokens/s and time per decode step when
K sequences run together (what continuous batching can give on this CPU at best).

    python benchmarks/batch_steps.py --levels 1,4,8,16 --parallel 8
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference_server.engines.base import SamplingParams  # noqa: E402
from reference_server.engines.llamacpp import LlamaCppEngine  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]


async def one_level(engine: LlamaCppEngine, streams: int, max_tokens: int) -> tuple[float, float]:
    """(output tokens/s, ms per llama_decode) for `streams` sequences started together."""
    prompt = engine.tokenize_chat(PROMPT)
    ban = {t: -100 for t in engine._eog}

    async def one(seed: int) -> int:
        params = SamplingParams(max_tokens=max_tokens, seed=seed, temperature=0.8, logit_bias=ban)
        return len([t async for t in engine.stream(prompt, params, threading.Event())])

    steps = engine._scheduler.steps
    start = time.perf_counter()
    counts = await asyncio.gather(*(one(seed) for seed in range(streams)))
    seconds = time.perf_counter() - start
    return sum(counts) / seconds, 1000 * seconds / max(engine._scheduler.steps - steps, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,4,8,16")
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    engine = LlamaCppEngine(n_threads=args.threads, parallel=args.parallel)
    try:
        asyncio.run(one_level(engine, 1, 8))  # warm-up
        for level in (int(x) for x in args.levels.split(",")):
            rate, step_ms = asyncio.run(one_level(engine, level, args.max_tokens))
            print(f"parallel {args.parallel}, {level:>3} streams: {rate:7.1f} output tok/s, "
                  f"{step_ms:6.1f} ms per step", flush=True)
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
