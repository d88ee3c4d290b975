"""The llama.cpp engine in process, one stream: the gap between output tokens (ITL p50 of each
answer) after a short prompt and after a long one, for the installed llama-cpp-python build or
another (`--site DIR`: a folder holding a `llama_cpp` package, e.g. a wheel of another profile
installed with `pip install --no-deps --target DIR WHEEL`). Why: the profile's instruction set
and flash attention change decode time most where the context is long (issue 24).

    python benchmarks/decode_by_context.py
    python benchmarks/decode_by_context.py --site /tmp/v4site --flash-attn off
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import threading
import time
from pathlib import Path

WORDS = "apple river stone cloud tiger music garden silver window candle forest ocean paper bridge".split()


async def answer_itl_ms(engine: object, words: int, seed: int, max_tokens: int) -> tuple[int, float]:
    """(prompt tokens, median gap between this answer's tokens in ms) of one seeded answer."""
    from reference_server.engines.base import SamplingParams

    rng = random.Random(seed)
    prompt = engine.tokenize_chat([{"role": "user", "content": " ".join(rng.choice(WORDS) for _ in range(words))}])  # type: ignore[attr-defined]
    params = SamplingParams(max_tokens=max_tokens, temperature=0.8, seed=seed, logit_bias={0: -100, 2: -100})
    arrivals = [time.perf_counter() async for _ in engine.stream(prompt, params, threading.Event())]  # type: ignore[attr-defined]
    return len(prompt), 1000 * statistics.median(b - a for a, b in zip(arrivals, arrivals[1:], strict=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site", type=Path, default=None, help="import llama_cpp from this folder first")
    parser.add_argument("--flash-attn", default="auto", choices=("auto", "on", "off"))
    parser.add_argument("--words", default="7,700", help="prompt lengths in words (7 words: ~37 tokens with "
                                                         "the template; 700: ~730)")
    parser.add_argument("--answers", type=int, default=4, help="answers per prompt length")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    if args.site is not None:
        if not (args.site / "llama_cpp").is_dir():
            parser.error(f"--site {args.site}: no llama_cpp package there")
        sys.path.insert(0, str(args.site))
    sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
    import llama_cpp

    from reference_server.engines.llamacpp import LlamaCppEngine
    from reference_server.llama_build import MARKER

    marker = Path(llama_cpp.__file__).parent / Path(MARKER).name
    print(f"llama_cpp from {Path(llama_cpp.__file__).parent}; marker: "
          f"{marker.read_text().strip() if marker.is_file() else 'none'}")
    engine = LlamaCppEngine(flash_attn=args.flash_attn)
    try:
        for words in (int(w) for w in args.words.split(",")):
            results = [asyncio.run(answer_itl_ms(engine, words, 1000 * words + i, args.max_tokens))
                       for i in range(args.answers)]
            print(f"flash attention {args.flash_attn} ({'on' if engine.flash_attn else 'off'}), "
                  f"prompt {results[0][0]} tokens: ITL p50 ms per answer "
                  f"{[round(itl, 2) for _, itl in results]}, median {statistics.median(i for _, i in results):.2f}")
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
