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

import ctypes
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
_KEPT_VIEWS = 1024  # logits views a workspace keeps (one a batch row, while the output buffer stays put)
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
        self.temperature = np.float32(temperature)
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._work = DrawWorkspace()  # for `sample`/`pick` alone; a decode step's rows share one
        self._bias_row: np.ndarray | None = None  # the bias over the whole vocabulary, made at the first draw

    def bias_row(self) -> np.ndarray | None:
        """The bias of every token (0 where none is set), or None without a bias. Why whole: a
        row's copy and its bias are then one numpy call (`np.add`), where adding a few entries by
        index took ~50 us right after a llama_decode. Made at the first draw, not at admission,
        so waiting requests hold none (200 KB each for this vocabulary); dropped at `close`."""
        if self._bias_row is None and len(self._bias_ids):
            row = np.zeros(self.n_vocab, dtype=np.float32)
            row[self._bias_ids] = self._bias
            self._bias_row = row
        return self._bias_row

    def sample(self, ctx: Any, row: int) -> int:
        return self.pick(self._work.logits_row(ctx, row, self.n_vocab))

    def pick(self, logits: np.ndarray) -> int:
        """The token drawn from `logits` (one row of the vocabulary's raw scores)."""
        return draw_rows([self], [logits], self._work)[0]

    def close(self) -> None:
        self._bias_row = None


class DrawWorkspace:
    """The float32 rows `draw_rows` works in, kept between calls (1.5 MB at 8 rows: allocating it
    every step would cost page faults); each row padded to whole blocks, the padding left at 0.
    Also the numpy views of llama.cpp's logits rows, by address (`logits_row`)."""

    def __init__(self) -> None:
        self._rows = np.zeros((0, 0), dtype=np.float32)
        self._n_vocab = 0
        self._views: dict[tuple[int, int], np.ndarray] = {}

    def logits_row(self, ctx: Any, row: int, n_vocab: int) -> np.ndarray:
        """Batch row `row`'s logits, read in place. Why a view kept by address: making one
        (`np.ctypeslib.as_array`) took ~80 us right after a llama_decode (~3 us in a loop), on the
        way to every step's next decode; llama.cpp hands out the same few addresses step after step.
        A kept view is only ever read when llama.cpp returns its address again, i.e. when that
        memory holds the row asked for."""
        pointer = llama_cpp.llama_get_logits_ith(ctx, row)
        if not pointer:
            raise ValueError(f"llama.cpp has no logits for batch row {row}")
        key = (ctypes.addressof(pointer.contents), n_vocab)
        view = self._views.get(key)
        if view is None:
            if len(self._views) >= _KEPT_VIEWS:  # the output buffer moved many times: start afresh
                self._views.clear()
            view = self._views[key] = np.ctypeslib.as_array(pointer, shape=(n_vocab,))
        return view

    def rows(self, count: int, n_vocab: int) -> np.ndarray:
        if n_vocab != self._n_vocab or self._rows.shape[0] < count:  # another vocabulary: new padding
            self._rows = np.zeros((count, -(-n_vocab // _BLOCK) * _BLOCK), dtype=np.float32)
            self._n_vocab = n_vocab
        return self._rows[:count]


def draw_rows(samplers: list[FullVocabSampler], logits: list[np.ndarray], work: DrawWorkspace) -> list[int]:
    """One token per row: samplers[i] draws from logits[i], in one numpy pass over every row.

    Why together: the passes over the vocabulary (copy, max, scale, exp, block sums) are one
    numpy call each for the whole step instead of one a row; the rest, a few calls a row, stays
    per row with plain floats. Measured in the server (benchmarks/step_overhead.py), where a
    row's draw takes ~0.4 ms against 0.07 ms in a loop, the count of numpy calls mattered more
    than their size: at 8 rows the step's sampling took ~0.2 ms less than row by row; at one row
    the same, where vectorising the rest too had cost ~0.05-0.15 ms more. Each row's token is the one
    its sampler would draw from that row alone: every operation is elementwise or within a row,
    and each row is laid out the same way whatever its batch-mates (tests hold a row drawn with
    others to the same row drawn alone).
    """
    count = len(samplers)
    n_vocab = samplers[0].n_vocab
    if any(sampler.n_vocab != n_vocab for sampler in samplers):
        raise ValueError("the rows of one draw come from one vocabulary")
    padded = work.rows(count, n_vocab)
    weights = padded[:, :n_vocab]
    for index, (sampler, row) in enumerate(zip(samplers, logits, strict=True)):
        bias = sampler.bias_row()
        if bias is None:
            np.copyto(weights[index], row)
        else:  # + 0 leaves every other logit as it is, + -inf bans
            np.add(row, bias, out=weights[index])
    best = weights.max(axis=1)
    temperatures = np.array([sampler.temperature for sampler in samplers], dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        # max first, then the temperature: a tiny temperature sends the rest to -inf, never to NaN
        # (a row whose best is not finite gets NaN here; it is answered below without them)
        np.subtract(weights, best[:, None], out=weights)
        np.divide(weights, temperatures[:, None], out=weights)
        np.exp(weights, out=weights)
    blocks = padded.reshape(count, -1, _BLOCK)
    # each block summed in float32 (1024 weights of at most 1, pairwise: ~1e-7 off), the running
    # sum over blocks in float64
    running = np.cumsum(blocks.sum(axis=2), axis=1, dtype=np.float64)
    tokens = []
    for index, sampler in enumerate(samplers):  # plain floats, a few numpy calls a row
        sums = running[index]
        total = float(sums[-1])
        if not math.isfinite(float(best[index])):  # every token banned (or a broken row): the unbiased best
            tokens.append(int(np.argmax(logits[index])))
            continue
        if not (math.isfinite(total) and total > 0):
            tokens.append(int(np.argmax(weights[index])))
            continue
        # the first block whose running sum passes the target (side="right": a target of 0 still
        # lands on a weight above 0; below the total, so the block found has weight too)
        target = min(total * sampler._rng.random(), math.nextafter(total, 0.0))
        block = int(sums.searchsorted(target, side="right"))
        before = float(sums[block - 1]) if block else 0.0
        inside = np.cumsum(blocks[index, block], dtype=np.float64)
        found = int(inside.searchsorted(target - before, side="right"))
        if found == _BLOCK:  # the block's float32 sum came out above its float64 one
            found = int(np.flatnonzero(blocks[index, block])[-1])
        tokens.append(block * _BLOCK + found)
    return tokens


def sample_rows(ctx: Any, rows: list[tuple[int, Sampler]], work: DrawWorkspace) -> list[int | Exception]:
    """The next token of each (batch row, sampler), or the exception that row's sampler raised:
    the full-vocabulary rows drawn together (`draw_rows`), the others one by one."""
    results: list[int | Exception] = [0] * len(rows)
    full = [(index, row, sampler) for index, (row, sampler) in enumerate(rows) if isinstance(sampler, FullVocabSampler)]
    if full:
        drawn: list[int] | list[Exception]
        try:
            drawn = draw_rows([sampler for _, _, sampler in full],
                              [work.logits_row(ctx, row, sampler.n_vocab) for _, row, sampler in full], work)
        except Exception as exc:  # noqa: BLE001 -- every row of the draw gets it
            drawn = [exc] * len(full)
        for (index, _, _), token in zip(full, drawn, strict=True):
            results[index] = token
    for index, (row, sampler) in enumerate(rows):
        if not isinstance(sampler, FullVocabSampler):
            try:
                results[index] = sampler.sample(ctx, row)
            except Exception as exc:  # noqa: BLE001 -- this row's request ends, the others go on
                results[index] = exc
    return results


class ChainSampler:
    """A llama.cpp sampler chain (`LlamaSampler`), which this sampler owns and frees."""

    def __init__(self, chain: Any) -> None:
        self._chain = chain

    def sample(self, ctx: Any, row: int) -> int:
        return int(llama_cpp.llama_sampler_sample(self._chain.sampler, ctx, row))

    def close(self) -> None:
        self._chain.close()
