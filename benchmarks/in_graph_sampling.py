"""llama.cpp's in-graph ("backend") sampling against the engine's numpy draw, one sequence.

Why: the draw is most of what our engine does between two decode steps at one stream (~0.4 ms
of a ~10 ms token, issue 24), and llama.cpp can now sample inside `llama_decode` itself
(`llama_set_sampler` with a chain of logit_bias, temp and dist: softmax, cumsum and a step
function as graph ops, the GIL released). This times both in the same raw decode loop (the
prompt, then one token a step; the numpy draw is the engine's `FullVocabSampler`), alternating
answer by answer, and measures what the in-graph draw's float32 running sum leaves short of 1 on
the model's own rows: ggml's dist picks the vocabulary's LAST token whenever the uniform number
lands in that shortfall (its index is clamped, not redrawn).

    python benchmarks/in_graph_sampling.py --answers 6
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llama_cpp  # noqa: E402

from reference_server.engines.llamacpp import LlamaCppEngine  # noqa: E402
from reference_server.engines.llamacpp_sampler import DrawWorkspace, FullVocabSampler  # noqa: E402

PROMPT = [{"role": "user", "content": "apple river stone cloud tiger music garden silver window candle"}]
BANNED = (0, 2)  # <|endoftext|>, <|im_end|>: every answer runs to its length
TEMPERATURE = 0.8


class RawLoop:
    """One sequence (id 0) decoded straight on the engine's context, one token a step."""

    def __init__(self, engine: LlamaCppEngine) -> None:
        self.ctx = engine._ctx  # the scheduler thread idles: nothing is submitted to it
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(512, 0, 1)
        self.pos = 0

    def restart(self) -> None:
        llama_cpp.llama_memory_seq_rm(self.memory, 0, -1, -1)
        self.pos = 0

    def decode(self, tokens: list[int]) -> None:
        """Evaluate `tokens` at the next positions; only the last one gives logits (or a token)."""
        batch = self.batch
        for row, token in enumerate(tokens):
            batch.token[row] = token
            batch.pos[row] = self.pos + row
            batch.n_seq_id[row] = 1
            batch.seq_id[row][0] = 0
            batch.logits[row] = row == len(tokens) - 1
        batch.n_tokens = len(tokens)
        if llama_cpp.llama_decode(self.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        self.pos += len(tokens)

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)


def in_graph_chain(n_vocab: int, seed: int) -> llama_cpp.llama_sampler_p:
    """logit_bias (the banned tokens), temp, dist: the numpy draw's settings as a backend chain."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    bias = (llama_cpp.llama_logit_bias * len(BANNED))(*(llama_cpp.llama_logit_bias(t, -math.inf) for t in BANNED))
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(BANNED), bias))
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(TEMPERATURE))
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
    return chain


def float32_shortfall(logits: np.ndarray) -> float:
    """1 - the last entry of ggml's running sum of this row's probabilities: softmax in float32
    (exp of the scaled row less its max, normalised by a double sum), then a float32 cumsum."""
    scaled = logits.astype(np.float32) / np.float32(TEMPERATURE)
    scaled[list(BANNED)] = -np.inf
    weights = np.exp(scaled - scaled.max())
    probs = weights * np.float32(1.0 / weights.sum(dtype=np.float64))
    return 1.0 - float(np.add.accumulate(probs, dtype=np.float32)[-1])


def answer(loop: RawLoop, prompt: list[int], tokens: int, draw: str, seed: int, n_vocab: int) -> float:
    """Median ms between two sampled tokens of one answer drawn by `draw` ("numpy" or "in-graph")."""
    loop.restart()
    chain = None
    if draw == "in-graph":
        chain = in_graph_chain(n_vocab, seed)
        if not llama_cpp.llama_set_sampler(loop.ctx, 0, chain):
            raise RuntimeError("llama.cpp would not run this chain in the graph")
    else:
        sampler = FullVocabSampler(n_vocab, {t: -100 for t in BANNED}, TEMPERATURE, seed)
        work = DrawWorkspace()
    try:
        loop.decode(prompt)
        stamps = []
        for _ in range(tokens):
            if chain is not None:
                token = llama_cpp.llama_get_sampled_token_ith(loop.ctx, -1)
            else:
                token = sampler.pick(work.logits_row(loop.ctx, -1, n_vocab))
            stamps.append(time.perf_counter())
            loop.decode([token])
    finally:
        if chain is not None:
            llama_cpp.llama_set_sampler(loop.ctx, 0, None)
            llama_cpp.llama_sampler_free(chain)
    return 1000 * statistics.median(b - a for a, b in zip(stamps, stamps[1:], strict=False))


def shortfalls(loop: RawLoop, prompt: list[int], rows: int, n_vocab: int) -> list[float]:
    """`float32_shortfall` of the first `rows` rows of untimed answers (numpy draw, seeds 0, 1, ...):
    apart from the timed ones, so that this numpy work lands in no gap between tokens."""
    found: list[float] = []
    seed = 0
    while len(found) < rows:
        loop.restart()
        sampler = FullVocabSampler(n_vocab, {t: -100 for t in BANNED}, TEMPERATURE, seed)
        work = DrawWorkspace()
        loop.decode(prompt)
        for _ in range(min(64, rows - len(found))):
            row = work.logits_row(loop.ctx, -1, n_vocab)
            found.append(float32_shortfall(row))
            loop.decode([sampler.pick(row)])
        seed += 1
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", type=int, default=6, help="answers per draw, alternating (default 6)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per answer (default 64)")
    args = parser.parse_args(argv)
    engine = LlamaCppEngine(parallel=1)
    loop = RawLoop(engine)
    try:
        prompt = engine.tokenize_chat(PROMPT)
        itl: dict[str, list[float]] = {"numpy": [], "in-graph": []}
        for index in range(args.answers):
            order = ("numpy", "in-graph") if index % 2 == 0 else ("in-graph", "numpy")
            for draw in order:
                itl[draw].append(answer(loop, prompt, args.tokens, draw, seed=index, n_vocab=engine.vocab_size))
            print(f"answer {index + 1}/{args.answers}: numpy {itl['numpy'][-1]:.2f} ms, "
                  f"in-graph {itl['in-graph'][-1]:.2f} ms", flush=True)
        print(f"{len(prompt)} prompt tokens, {args.tokens} tokens an answer, ms between tokens (p50 of each answer):")
        for draw, values in itl.items():
            print(f"  {draw:9s} median {statistics.median(values):.2f}  ({', '.join(f'{v:.2f}' for v in values)})")
        short = shortfalls(loop, prompt, 200, engine.vocab_size)
        past_end = statistics.mean(max(s, 0.0) for s in short)  # where a uniform number finds no token
        print(f"in-graph running sum short of 1 over {len(short)} rows: min {min(short):.1e}, "
              f"max {max(short):.1e}; the last token drawn for nothing about once in "
              + (f"{1 / past_end:,.0f} draws" if past_end > 0 else "never (no row fell short)"))
    finally:
        loop.close()
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
