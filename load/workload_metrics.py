"""What the workload asked for against what the server served, per step: prompt and output length
histograms (requested beside served, served from usage), the prefix-sharing ratio, and latencies
per conversation turn. Kept apart from load.metrics: these describe the traffic, those the speed."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from load.metrics import Window, request_e2e, request_ttft, sent_in, summarize_ms
from load.records import RequestRecord

HISTOGRAM_BINS = 20

FORMULAS: dict[str, str] = {
    "lengths": "requested = what the workload planned (prompt tokens, max_tokens); served = usage.prompt_tokens "
               "and usage.completion_tokens of the answer; per successful request sent in the window",
    "output_short": "output short = successful requests whose usage.completion_tokens < their max_tokens "
                    "(the model stopped early, or the server cut the output)",
    "prefix_sharing_ratio": "prefix-sharing ratio = prompt tokens of leading shared-prefix blocks that an earlier "
                            "request of the step (warm-up included, in send order) had already sent, up to the first "
                            "block it had not (or had sent shorter) / all prompt tokens (usage.prompt_tokens) of the "
                            "requests sent in the window: what a perfect prefix cache could skip",
    "per_turn": "per turn = the latency summaries of the successful requests of each conversation turn",
}


def _summary(values: Sequence[int]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "mean": None, "p50": None, "min": None, "max": None}
    array = np.asarray(values, dtype=np.float64)
    return {"count": len(values), "mean": float(array.mean()), "p50": float(np.percentile(array, 50)),
            "min": int(array.min()), "max": int(array.max())}


def length_comparison(requested: Sequence[int], served: Sequence[int]) -> dict[str, Any]:
    """Summaries of both, and histograms of both over the same bin edges (so they overlay)."""
    both = [*requested, *served]
    if not both:
        return {"requested": _summary([]), "served": _summary([]), "edges": [], "requested_counts": [],
                "served_counts": []}
    low, high = min(both), max(both)
    edges = np.linspace(low, high + 1, min(HISTOGRAM_BINS, high - low + 1) + 1)
    return {"requested": _summary(requested), "served": _summary(served), "edges": edges.tolist(),
            "requested_counts": np.histogram(requested, edges)[0].tolist() if requested else [],
            "served_counts": np.histogram(served, edges)[0].tolist() if served else []}


def prefix_sharing(records: Sequence[RequestRecord], window: Window) -> dict[str, Any] | None:
    """Tokens a prefix cache could reuse, over all prompt tokens (None: no request carried a prefix)."""
    if not any(r.prefix_blocks for r in records):
        return None
    seen: dict[str, int] = {}  # block id -> the most of its tokens any earlier request sent
    reusable = total = 0
    for record in sorted(records, key=lambda r: r.send_ns):
        measured = window.start_ns <= record.send_ns < window.end_ns and record.ok
        prompt = record.usage_prompt if record.usage_prompt is not None else record.requested_prompt_tokens
        if measured and prompt:
            total += prompt
            for block_id, tokens in record.prefix_blocks:
                sent_before = seen.get(block_id, 0)
                reusable += min(tokens, sent_before)
                if sent_before < tokens:  # the shared prefix ends inside (or before) this block
                    break
        for block_id, tokens in record.prefix_blocks:
            seen[block_id] = max(seen.get(block_id, 0), tokens)
    return {"reusable_prompt_tokens": reusable, "prompt_tokens": total,
            "ratio": reusable / total if total else None}


def per_turn(good: Sequence[RequestRecord]) -> list[dict[str, Any]] | None:
    """TTFT, E2E and served prompt length of each turn index (None: not a multi-turn workload)."""
    turns: dict[int, list[RequestRecord]] = defaultdict(list)
    for record in good:
        if record.turn is not None:
            turns[record.turn].append(record)
    if not turns:
        return None
    return [{"turn": turn, "requests": len(rs),
             "ttft_ms": summarize_ms([v for r in rs if (v := request_ttft(r)) is not None]),
             "e2e_ms": summarize_ms([v for r in rs if (v := request_e2e(r)) is not None]),
             "prompt_tokens_mean": float(np.mean(prompts)) if (prompts := [r.usage_prompt for r in rs
                                                                           if r.usage_prompt is not None]) else None}
            for turn, rs in sorted(turns.items())]


def workload_metrics(records: Sequence[RequestRecord], window: Window) -> dict[str, Any]:
    """Everything above for one step."""
    good = [r for r in sent_in(records, window) if r.ok]
    served_output = [r.usage_completion for r in good if r.usage_completion is not None]
    return {
        "input_tokens": length_comparison([r.requested_prompt_tokens for r in good
                                           if r.requested_prompt_tokens is not None],
                                          [r.usage_prompt for r in good if r.usage_prompt is not None]),
        "output_tokens": length_comparison([r.max_tokens for r in good if r.max_tokens is not None], served_output),
        "output_short": sum(1 for r in good if r.max_tokens is not None and r.usage_completion is not None
                            and r.usage_completion < r.max_tokens),
        "prefix_sharing": prefix_sharing(records, window),
        "per_turn": per_turn(good),
    }
