"""Time per sampled token of the llama.cpp engine's two samplers on the model's own logits: the
numpy full-vocabulary draw (requests without a filter) against llama.cpp's sampler chain doing the
same draw, and the chain with a filter (what such requests still get).

    python benchmarks/sampler_speed.py --draws 2000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference_server.engines.base import SamplingParams  # noqa: E402
from reference_server.engines.llamacpp import LlamaCppEngine  # noqa: E402
from reference_server.engines.llamacpp_sampler import ChainSampler, Sampler  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a short story about a cat and a dog."}]


def per_draw_ms(engine: LlamaCppEngine, sampler: Sampler, draws: int) -> float:
    start = time.perf_counter()
    for _ in range(draws):
        sampler.sample(engine._ctx, -1)  # the last row of logits the context holds
    return 1000 * (time.perf_counter() - start) / draws


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=2000)
    args = parser.parse_args(argv)
    engine = LlamaCppEngine(parallel=1)
    try:
        prompt = engine.tokenize_chat(PROMPT)

        async def prefill() -> None:
            params = SamplingParams(max_tokens=1, seed=1)
            _ = [t async for t in engine.stream(prompt, params, threading.Event())]

        asyncio.run(prefill())  # leaves the prompt's last row of logits in the context
        plain = SamplingParams(max_tokens=1, temperature=0.8, seed=2, logit_bias={0: -100, 2: -100})
        cases = {
            "numpy full vocabulary (temperature 0.8, logit_bias)": engine._sampler(prompt, plain),
            "llama.cpp chain, same settings": ChainSampler(engine._chain(prompt, plain)),
            "llama.cpp chain with top_k 40": engine._sampler(prompt, SamplingParams(max_tokens=1, temperature=0.8,
                                                                                    top_k=40, seed=2)),
            "llama.cpp chain with top_p 0.9": engine._sampler(prompt, SamplingParams(max_tokens=1, temperature=0.8,
                                                                                     top_p=0.9, seed=2)),
        }
        print(f"vocabulary {engine.vocab_size} tokens, {args.draws} draws each")
        for name, sampler in cases.items():
            per_draw_ms(engine, sampler, 50)  # warm-up
            print(f"{name:55s} {per_draw_ms(engine, sampler, args.draws):.3f} ms per token")
            sampler.close()
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
