"""Sampling arithmetic every engine shares: logprobs from raw logits, and when JSON output is whole.

Why one module: the mock, llamacpp and exllamav2 engines must report logprobs the same way (a
float64 log-softmax over the model's vocabulary, the top-n most likely first) and end JSON mode at
the same point (the value has closed), so that one conformance check holds for all of them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

# Last non-space bytes of JSON text after which a complete value may have just been closed
# (object, array, string, or the literals true/false/null); any other piece cannot end one.
JSON_CLOSERS = frozenset(b'}]"el')

TokenLogprobs = tuple[float, tuple[tuple[int, float], ...]]


def log_softmax(logits: ArrayLike) -> np.ndarray:
    """Log-probabilities over the last axis, in float64 (stable: the row's maximum is taken out first)."""
    rows = np.asarray(logits, dtype=np.float64)
    top = rows.max(axis=-1, keepdims=True)
    return rows - (top + np.log(np.exp(rows - top).sum(axis=-1, keepdims=True)))


def top_indices(row: np.ndarray, k: int) -> np.ndarray:
    """The indices of the k largest values of `row`, largest first (k clipped to the row's length)."""
    k = min(max(k, 0), row.shape[-1])
    if not k:
        return np.empty(0, dtype=np.int64)
    best = np.argpartition(-row, k - 1)[:k]
    return best[np.argsort(-row[best], kind="stable")]


def logprobs_from_logits(
    logits: ArrayLike, token_ids: Sequence[int], top_n: int, vocab_size: int
) -> list[TokenLogprobs]:
    """Per generated token: its logprob and the top_n (token id, logprob), most likely first.

    `logits` holds one row per token (the raw logits the token was sampled from, before any
    sampling filter); columns past `vocab_size` (a model's padding) are left out.
    """
    rows = np.asarray(logits, dtype=np.float64).reshape(len(token_ids), -1)[:, :vocab_size]
    out: list[TokenLogprobs] = []
    for row, token in zip(log_softmax(rows), token_ids, strict=True):
        best = tuple((int(i), float(row[i])) for i in top_indices(row, top_n))
        out.append((float(row[token]), best))
    return out


def json_complete(text: bytes | bytearray) -> bool:
    """Whether text is one whole JSON value (only whitespace could follow)."""
    try:
        json.loads(bytes(text))
    except ValueError:
        return False
    return True


def json_closed_by(text: bytes | bytearray, piece: bytes) -> bool:
    """Whether `piece`, the last one appended to `text`, closed the JSON value: JSON mode ends there.

    The cheap look at the piece's last byte spares a parse of the whole text after most tokens.
    """
    stripped = piece.rstrip()
    return bool(stripped) and stripped[-1] in JSON_CLOSERS and json_complete(text)
