"""The two samplers of the llama.cpp engine, behind one interface: `sample(ctx, row) -> token`.

- `FullVocabSampler`: logit_bias, temperature and a seeded draw over the whole vocabulary, in
  numpy. It serves every request that sets no filter (no top_k/top_p/min_p, no penalty, no JSON
  mode): most requests. llama.cpp's dist sampler does the same draw in about 0.6 ms a row (a
  fresh candidate array per call, then scalar expf and double sums over 49k tokens); at 8
  streams that was 5 ms of every 60 ms decode step (issue 24). This one takes about 0.1 ms.
- `ChainSampler`: llama.cpp's own sampler chain, for a request that sets any filter.

Which one a request gets is decided from `SamplingParams`' fields, not from a list of filters:
any field that is not one this module names (`FULL_VOCAB_APPLIES`, `NOT_SAMPLING`) and is not
at its neutral default sends the request to the chain, so a filter added later can never be
skipped silently by the fast path.

Both draw from a generator seeded with the request's seed (numpy's PCG64 here, llama.cpp's
mt19937 in the chain), so a seed gives the same tokens every time; the two draw differently, so
a seed's tokens depend on which sampler it gets.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol

import llama_cpp
import numpy as np

from reference_server.engines.base import SamplingParams

FULL_VOCAB_APPLIES = frozenset({"temperature", "logit_bias", "seed"})
# Never change the draw. (`extras`, the spec's parameters without a field, is not here: any such
# parameter sends a request to the chain, so a filter added that way cannot be skipped.)
NOT_SAMPLING = frozenset({"max_tokens", "logprobs", "top_logprobs"})
_BLOCK = 1024  # the draw finds its block of the vocabulary first, then the token inside it


class Sampler(Protocol):
    """Picks one sequence's next token from the logits of one batch row."""

    def sample(self, ctx: Any, row: int) -> int: ...

    def close(self) -> None: ...


def _neutral(item: dataclasses.Field[Any]) -> Any:
    if item.default is not dataclasses.MISSING:
        return item.default
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return dataclasses.MISSING  # a required field: never neutral


def full_vocab_serves(params: SamplingParams) -> bool:
    """Whether `params` set nothing but temperature (above 0), logit_bias and seed."""
    if not np.float32(params.temperature) > 0:  # 0 (or below float32's least) is llama.cpp's greedy
        return False
    for item in dataclasses.fields(params):
        if item.name in FULL_VOCAB_APPLIES or item.name in NOT_SAMPLING:
            continue
        if getattr(params, item.name) != _neutral(item):
            return False
    return True


class FullVocabSampler:
    """softmax((logits + bias) / temperature) over the whole vocabulary, one seeded draw a token."""

    def __init__(self, n_vocab: int, logit_bias: dict[int, int], temperature: float, seed: int) -> None:
        self.n_vocab = n_vocab
        biased = {t: b for t, b in logit_bias.items() if 0 <= t < n_vocab and b != 0}
        self._bias_ids = np.fromiter(biased, dtype=np.int64, count=len(biased))
        self._bias = np.array([-math.inf if b <= -100 else float(b) for b in biased.values()], dtype=np.float32)
        self._temperature = np.float32(temperature)
        self._rng = np.random.Generator(np.random.PCG64(seed))
        blocks = -(-n_vocab // _BLOCK)
        self._padded = np.zeros(blocks * _BLOCK, dtype=np.float32)  # the tail past n_vocab stays 0
        self._blocks = self._padded.reshape(blocks, _BLOCK)

    def sample(self, ctx: Any, row: int) -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, row), shape=(self.n_vocab,))
        return self.pick(logits)

    def pick(self, logits: np.ndarray) -> int:
        """The token drawn from `logits` (one row of the vocabulary's raw scores)."""
        weights = self._padded[: self.n_vocab]
        np.copyto(weights, logits)
        if len(self._bias_ids):
            weights[self._bias_ids] += self._bias
        best = weights.max()
        if not np.isfinite(best):  # every token banned (or a broken row): the unbiased best
            return int(np.argmax(logits))
        # max first, then the temperature: a tiny temperature sends the rest to -inf, never to NaN
        np.subtract(weights, best, out=weights)
        with np.errstate(over="ignore"):
            weights /= self._temperature
        np.exp(weights, out=weights)
        block_sums = np.cumsum(self._blocks.sum(axis=1, dtype=np.float64))
        total = block_sums[-1]
        if not (np.isfinite(total) and total > 0):
            return int(np.argmax(weights[: self.n_vocab]))
        # the first block whose running sum passes the target (side="right": a target of 0 still
        # lands on a weight above 0; below the total, so the block found has weight too)
        target = min(total * self._rng.random(), np.nextafter(total, 0.0))
        block = int(np.searchsorted(block_sums, target, side="right"))
        before = block_sums[block - 1] if block else 0.0
        inside = np.cumsum(self._blocks[block], dtype=np.float64)
        index = int(np.searchsorted(inside, target - before, side="right"))
        if index == _BLOCK:  # the block's own sum, added in another order, fell a rounding short
            index = int(np.flatnonzero(self._blocks[block])[-1])
        return block * _BLOCK + index

    def close(self) -> None:
        pass


class ChainSampler:
    """A llama.cpp sampler chain (`LlamaSampler`), which this sampler owns and frees."""

    def __init__(self, chain: Any) -> None:
        self._chain = chain

    def sample(self, ctx: Any, row: int) -> int:
        return int(llama_cpp.llama_sampler_sample(self._chain.sampler, ctx, row))

    def close(self) -> None:
        self._chain.close()
