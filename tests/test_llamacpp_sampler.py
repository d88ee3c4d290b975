"""The llama.cpp engine's numpy sampler: draws softmax((logits + bias) / temperature) over the
whole vocabulary, seeded, and serves only requests that set no filter."""

from __future__ import annotations

import ctypes
import dataclasses
import math

import numpy as np
import pytest

from reference_server.engines import llamacpp_sampler
from reference_server.engines.base import SamplingParams
from reference_server.engines.llamacpp_sampler import (
    FULL_VOCAB_APPLIES,
    NOT_SAMPLING,
    DrawWorkspace,
    FullVocabSampler,
    draw_rows,
    full_vocab_serves,
    sample_rows,
)

N_VOCAB = 3000  # three blocks, the last one partial


def logits() -> np.ndarray:
    row = np.zeros(N_VOCAB, dtype=np.float32)
    row[5], row[1500], row[2999], row[7] = 3.0, 2.5, 2.0, -1.0
    return row


def expected(row: np.ndarray, bias: dict[int, float], temperature: float) -> np.ndarray:
    scores = row.astype(np.float64)
    for token, value in bias.items():
        scores[token] = -math.inf if value <= -100 else scores[token] + value
    weights = np.exp((scores - scores.max()) / temperature)
    return weights / weights.sum()


def frequencies(sampler: FullVocabSampler, row: np.ndarray, draws: int) -> np.ndarray:
    return np.bincount([sampler.pick(row) for _ in range(draws)], minlength=N_VOCAB) / draws


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_draws_follow_the_softmax_of_the_biased_scaled_logits(temperature: float) -> None:
    bias = {1500: -100, 7: 4}
    draws = 20000
    seen = frequencies(FullVocabSampler(N_VOCAB, bias, temperature, seed=1), logits(), draws)
    want = expected(logits(), bias, temperature)
    for token in (5, 2999, 7):
        spread = math.sqrt(want[token] * (1 - want[token]) / draws)
        assert abs(seen[token] - want[token]) < 5 * spread + 1e-9, token
    rest = np.ones(N_VOCAB, dtype=bool)
    rest[[5, 2999, 7, 1500]] = False
    spread = math.sqrt(want[rest].sum() * (1 - want[rest].sum()) / draws)
    assert abs(seen[rest].sum() - want[rest].sum()) < 5 * spread
    assert seen[1500] == 0  # banned
    assert seen[rest].max() < 0.01  # the flat tail is spread over all its tokens, every block


def test_a_bias_of_100_forces_its_token_and_padding_is_never_drawn() -> None:
    sampler = FullVocabSampler(N_VOCAB, {2998: 100}, 1.0, seed=3)
    assert {sampler.pick(logits()) for _ in range(200)} == {2998}
    flat = FullVocabSampler(N_VOCAB, {}, 1.9, seed=4)
    assert max(flat.pick(np.zeros(N_VOCAB, dtype=np.float32)) for _ in range(5000)) < N_VOCAB


def test_a_seed_repeats_its_draws_and_another_seed_does_not() -> None:
    flat = np.zeros(N_VOCAB, dtype=np.float32)
    one, again, other = (FullVocabSampler(N_VOCAB, {}, 1.0, seed=s) for s in (9, 9, 10))
    draws = [one.pick(flat) for _ in range(50)]
    assert draws == [again.pick(flat) for _ in range(50)]
    assert draws != [other.pick(flat) for _ in range(50)]


# A filter value for every SamplingParams field the numpy sampler does not apply: a new field
# fails this test until it is added here, so it cannot be skipped silently by the fast path.
FILTERS = {"top_k": 40, "top_p": 0.9, "min_p": 0.05, "frequency_penalty": 0.5, "presence_penalty": 0.5,
           "repetition_penalty": 1.1, "json_mode": True, "json_schema": {"type": "object"},
           "extras": {"typical_p": 0.5}}


def test_only_requests_without_a_filter_get_the_numpy_sampler() -> None:
    others = {f.name for f in dataclasses.fields(SamplingParams)} - FULL_VOCAB_APPLIES - NOT_SAMPLING
    assert others == set(FILTERS)
    plain = SamplingParams(max_tokens=8, temperature=0.8, seed=5, logit_bias={0: -100}, logprobs=True, top_logprobs=3)
    assert full_vocab_serves(plain)
    assert full_vocab_serves(SamplingParams(max_tokens=8))
    for name, value in FILTERS.items():
        assert not full_vocab_serves(dataclasses.replace(plain, **{name: value})), name
    assert not full_vocab_serves(dataclasses.replace(plain, temperature=0.0))  # llama.cpp's greedy
    assert not full_vocab_serves(dataclasses.replace(plain, temperature=5e-324))  # 0 as a float32


@pytest.mark.parametrize("temperature", [1e-40, 1e-30, 1e-8])
def test_a_tiny_temperature_draws_the_best_token(temperature: float) -> None:
    """The spec's range is open at 0: near it the draw is greedy, never a NaN or an index error."""
    sampler = FullVocabSampler(N_VOCAB, {5: -100}, temperature, seed=6)
    assert {sampler.pick(logits()) for _ in range(20)} == {1500}


def test_a_row_with_every_token_banned_still_gives_a_token() -> None:
    sampler = FullVocabSampler(4, {0: -100, 1: -100, 2: -100, 3: -100}, 1.0, seed=7)
    assert sampler.pick(np.array([0.0, 3.0, 1.0, 2.0], dtype=np.float32)) == 1


# (logit_bias, temperature, seed) of rows drawn together: plain, hot, cold, a forced token, every
# token banned, a tiny temperature
ROWS = [({}, 1.0, 11), ({7: 4}, 1.7, 12), ({5: -100}, 0.3, 13), ({2998: 100}, 1.0, 14),
        ({t: -100 for t in range(N_VOCAB)}, 1.0, 15), ({}, 1e-30, 16)]


def row_logits(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(N_VOCAB) * 2).astype(np.float32)


def test_rows_drawn_together_give_each_row_what_it_draws_alone() -> None:
    """A decode step draws its rows in one pass: each row's tokens must be its own seed's, as if
    drawn alone, whatever its batch-mates' bias, temperature or vocabulary."""
    together = [FullVocabSampler(N_VOCAB, bias, temperature, seed) for bias, temperature, seed in ROWS]
    alone = [FullVocabSampler(N_VOCAB, bias, temperature, seed) for bias, temperature, seed in ROWS]
    work = DrawWorkspace()
    for step in range(40):
        rows = [row_logits(100 * step + index) for index in range(len(ROWS))]
        order = list(range(len(ROWS)))[step % len(ROWS):] + list(range(len(ROWS)))[: step % len(ROWS)]
        drawn = draw_rows([together[i] for i in order], [rows[i] for i in order], work)
        assert {i: token for i, token in zip(order, drawn, strict=True)} == {
            i: alone[i].pick(rows[i]) for i in range(len(ROWS))}
    assert len({alone[0].pick(row_logits(1)) for _ in range(30)}) > 5  # the plain row does vary


def test_a_step_samples_every_row_and_a_failing_sampler_ends_only_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = {row: row_logits(row) for row in range(4)}
    monkeypatch.setattr(DrawWorkspace, "logits_row", lambda self, ctx, row, n_vocab: rows[row])

    class Broken:
        def sample(self, ctx: object, row: int) -> int:
            raise RuntimeError(f"row {row} failed")

        def close(self) -> None:
            pass

    class Fixed:
        def sample(self, ctx: object, row: int) -> int:
            return 1000 + row

        def close(self) -> None:
            pass

    full = [FullVocabSampler(N_VOCAB, {}, 0.7, seed) for seed in (21, 22)]
    twins = [FullVocabSampler(N_VOCAB, {}, 0.7, seed) for seed in (21, 22)]
    results = sample_rows(None, [(0, full[0]), (1, Broken()), (2, Fixed()), (3, full[1])], DrawWorkspace())
    assert results[0] == twins[0].pick(rows[0]) and results[3] == twins[1].pick(rows[3])
    assert isinstance(results[1], RuntimeError) and str(results[1]) == "row 1 failed"
    assert results[2] == 1002


def test_a_workspace_reused_for_a_smaller_vocabulary_never_draws_past_it() -> None:
    work = DrawWorkspace()
    big = FullVocabSampler(N_VOCAB, {}, 1.0, seed=31)
    draw_rows([big], [np.zeros(N_VOCAB, dtype=np.float32)], work)  # every weight 1, padding past 3000 stays 0
    small = FullVocabSampler(2500, {}, 1.0, seed=32)  # the same padded width (3 blocks)
    flat = np.zeros(2500, dtype=np.float32)
    assert max(draw_rows([small], [flat], work)[0] for _ in range(3000)) < 2500


def test_logits_rows_are_read_in_place_at_the_address_llama_cpp_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    """A view kept from an earlier step must show what llama.cpp's buffer holds now, and a row at
    another address (the buffer moved) must be read there, not from a kept view."""
    buffers = [(ctypes.c_float * 8)(), (ctypes.c_float * 8)()]
    where = {"buffer": 0}

    def get_logits_ith(ctx: object, row: int) -> object:
        base = ctypes.addressof(buffers[where["buffer"]])
        return ctypes.cast(base + 4 * 4 * row, ctypes.POINTER(ctypes.c_float)) if row >= 0 else None

    monkeypatch.setattr(llamacpp_sampler.llama_cpp, "llama_get_logits_ith", get_logits_ith)
    work = DrawWorkspace()
    for step in range(3):
        buffers[0][:] = [float(step * 10 + i) for i in range(8)]
        assert work.logits_row(None, 1, 4).tolist() == [step * 10 + 4.0, step * 10 + 5.0, step * 10 + 6.0,
                                                         step * 10 + 7.0]
        assert work.logits_row(None, 0, 4).tolist()[0] == step * 10
    buffers[1][:] = [-1.0] * 8
    where["buffer"] = 1
    assert work.logits_row(None, 0, 4).tolist() == [-1.0] * 4
    with pytest.raises(ValueError, match="no logits for batch row -1"):
        work.logits_row(None, -1, 4)
