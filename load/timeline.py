"""A step second by second, from its raw records: what Locust's own charts show, with exact numbers.

Per one-second bin from the step's start (warm-up included, so a ramp or a growing queue shows):
requests in flight (time-weighted mean over the bin), output tokens/s (token events of streams, of
any kind, as they arrived; a non-streamed answer's usage when it ended), TTFT p50/p99 of the requests whose
first token came in the bin, ITL p50/p99 of the gaps that ended in it, requests sent and failed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from load.records import RequestRecord

BIN_S = 1.0


def _percentiles_by_bin(bins: np.ndarray, values_ms: np.ndarray, count: int) -> tuple[list, list]:
    p50: list[float | None] = [None] * count
    p99: list[float | None] = [None] * count
    if values_ms.size:
        order = np.argsort(bins, kind="stable")
        bins, values_ms = bins[order], values_ms[order]
        edges = np.searchsorted(bins, np.arange(count + 1))
        for i in range(count):
            chunk = values_ms[edges[i]:edges[i + 1]]
            if chunk.size:
                p50[i], p99[i] = (float(v) for v in np.percentile(chunk, [50, 99]))
    return p50, p99


def step_timeline(records: Sequence[RequestRecord], bin_s: float = BIN_S) -> dict[str, Any]:
    """Per-bin series of one step (times relative to its origin); empty lists when nothing was sent."""
    ends = [r.end_ns for r in records if r.end_ns is not None]
    if not records or not ends:
        return {"bin_s": bin_s, "t": [], "inflight": [], "output_tokens_per_s": [], "ttft_p50_ms": [],
                "ttft_p99_ms": [], "itl_p50_ms": [], "itl_p99_ms": [], "sent": [], "failed": []}
    bin_ns = int(bin_s * 1e9)
    count = max(1, math.ceil(max(ends) / bin_ns))
    inflight = np.zeros(count)
    tokens = np.zeros(count)
    sent = np.zeros(count, dtype=int)
    failed = np.zeros(count, dtype=int)
    for r in records:
        start, end = r.send_ns, r.end_ns if r.end_ns is not None else max(ends)
        sent[min(start // bin_ns, count - 1)] += 1
        if not r.ok:
            failed[min(end // bin_ns, count - 1)] += 1
        first, last = start // bin_ns, min(end // bin_ns, count - 1)
        for b in range(first, last + 1):  # the part of [start, end) inside each bin
            inflight[b] += (min(end, (b + 1) * bin_ns) - max(start, b * bin_ns)) / bin_ns
        if r.ok:
            if r.token_ns:
                np.add.at(tokens, np.minimum(np.asarray(r.token_ns) // bin_ns, count - 1), 1)
            elif r.end_ns is not None:
                tokens[min(r.end_ns // bin_ns, count - 1)] += r.output_tokens
    good = [r for r in records if r.ok]
    first_tokens = [(r.first_token_ns, r.first_token_ns - r.send_ns) for r in good if r.first_token_ns is not None]
    ttft_bins = np.array([t // bin_ns for t, _ in first_tokens], dtype=np.int64)
    ttft_ms = np.array([v / 1e6 for _, v in first_tokens])
    gap_ends = [np.asarray(r.token_ns[1:], dtype=np.int64) for r in good if len(r.token_ns) > 1]
    gaps = [np.diff(np.asarray(r.token_ns, dtype=np.int64)) for r in good if len(r.token_ns) > 1]
    itl_bins = np.concatenate(gap_ends) // bin_ns if gap_ends else np.empty(0, dtype=np.int64)
    itl_ms = np.concatenate(gaps) / 1e6 if gaps else np.empty(0)
    ttft_p50, ttft_p99 = _percentiles_by_bin(np.minimum(ttft_bins, count - 1), ttft_ms, count)
    itl_p50, itl_p99 = _percentiles_by_bin(np.minimum(itl_bins, count - 1), itl_ms, count)
    return {"bin_s": bin_s, "t": [i * bin_s for i in range(count)], "inflight": inflight.round(3).tolist(),
            "output_tokens_per_s": (tokens / bin_s).tolist(), "ttft_p50_ms": ttft_p50, "ttft_p99_ms": ttft_p99,
            "itl_p50_ms": itl_p50, "itl_p99_ms": itl_p99, "sent": sent.tolist(), "failed": failed.tolist()}
