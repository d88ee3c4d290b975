"""The engines' shared logprob arithmetic and the JSON-mode end test."""

from __future__ import annotations

import math

import numpy as np

from reference_server.engines.logprobs import json_closed_by, log_softmax, logprobs_from_logits, top_indices


def test_log_softmax_is_a_distribution_even_with_masked_tokens() -> None:
    row = log_softmax([1000.0, 999.0, -math.inf])  # large values must not overflow
    assert abs(np.exp(row).sum() - 1.0) < 1e-12
    assert row[2] == -math.inf and row[0] > row[1]


def test_top_indices_largest_first_and_clipped() -> None:
    row = np.array([0.1, 0.9, 0.5, 0.9])
    assert top_indices(row, 3).tolist() == [1, 3, 2]  # a tie keeps the lower index first
    assert top_indices(row, 10).tolist() == [1, 3, 2, 0]
    assert top_indices(row, 0).size == 0


def test_logprobs_ignore_padding_columns_past_the_vocabulary() -> None:
    logits = np.array([[0.0, 0.0, 50.0]])  # column 2 is padding: it must not take any mass
    ((logprob, best),) = logprobs_from_logits(logits, [0], 2, vocab_size=2)
    assert logprob == math.log(0.5)
    assert [i for i, _ in best] == [0, 1]


def test_json_closed_by_the_piece_that_ends_the_value() -> None:
    assert not json_closed_by(b'{"a": "x', b'"x')
    assert json_closed_by(b'{"a": "x"}', b'"}')
    assert not json_closed_by(b'{"a": 1} ', b" ")  # whitespace closes nothing
    assert json_closed_by(b"[true", b"e") is False and json_closed_by(b"true", b"e")
