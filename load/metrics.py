"""LLM latency and throughput metrics from raw request records, with their formulas.

Percentiles are exact: every raw sample of every worker is kept (nanosecond integers) and
merged before one `numpy.percentile` over the lot, so there is no bucket rounding at all
(Locust's own stats keep about two significant digits).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from load.records import ERROR_KINDS, RequestRecord
from load.slo import is_latency_objective

PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0, 99.9)

FORMULAS: dict[str, str] = {
    "ttft": "TTFT = arrival of the first token event - request send time; a token event is an SSE event whose "
            "delta carries a generated token of any kind: content, reasoning (delta.reasoning_content or "
            "delta.reasoning) or a tool call (delta.tool_calls); the role-only first event is none",
    "ttfc": "TTFC = arrival of the first SSE event with non-empty delta.content - request send time; equals "
            "TTFT unless the model reasons (or calls a tool) first; streams that never sent content have none",
    "itl": "ITL = gap between consecutive token events (content, reasoning or tool call) of one stream; "
           "all gaps of all streams pooled",
    "reasoning_tokens": "reasoning tokens = usage.completion_tokens_details.reasoning_tokens when the server "
                        "sends it, else the stream's reasoning events; they are part of the output tokens "
                        "(usage.completion_tokens counts them, as OpenAI's usage does)",
    "token_count_mismatches": "token count mismatch = a stream whose usage.completion_tokens differs from its "
                              "token events of every kind (reasoning included)",
    "tpot": "TPOT = (E2E - TTFT) / (output tokens - 1), per request with at least 2 output tokens",
    "e2e": "E2E = arrival of the last byte - request send time",
    "requests_per_s": "requests/s = successful requests that ended inside the window / window length",
    "output_tokens_per_s": "output tokens/s = usage.completion_tokens of those requests / window length",
    "goodput": "goodput = requests sent in the window that succeeded and met every per-request SLO "
               "(TTFT, TPOT, E2E, and the request's own ITL percentile) / window length",
    "send_lag": "send lag = actual send time - intended send time (open-loop arrivals only)",
    "window": "window = from the end of warm-up to when sending stopped (duration or request count)",
    "error_rate": "error rate = requests sent in the window that failed / requests sent in the window",
    "timeline": "over time, per second of the step (warm-up included): in flight = time-weighted mean of the "
                "requests open in that second; output tokens/s = token events that arrived in it (non-streamed: "
                "usage at the end); TTFT p50/p99 of the first tokens that arrived in it; ITL of the gaps ending in it",
}


def summarize_ms(
    samples_ns: Iterable[int] | np.ndarray, percentiles: Sequence[float] = PERCENTILES
) -> dict[str, float | int | None]:
    """count, mean, min, max and exact percentiles of nanosecond samples, in milliseconds."""
    values = np.asarray(list(samples_ns) if not isinstance(samples_ns, np.ndarray) else samples_ns,
                        dtype=np.float64) / 1e6
    if values.size == 0:
        return {"count": 0, "mean": None, "min": None, "max": None, **{_pkey(p): None for p in percentiles}}
    points = np.percentile(values, percentiles)
    return {"count": int(values.size), "mean": float(values.mean()), "min": float(values.min()),
            "max": float(values.max()), **{_pkey(p): float(v) for p, v in zip(percentiles, points, strict=True)}}


def _pkey(p: float) -> str:
    return f"p{p:g}".replace(".", "_")


@dataclass(frozen=True)
class Window:
    """The measured part of a step, in ns relative to the step's origin."""

    start_ns: int
    end_ns: int

    @property
    def seconds(self) -> float:
        return max(self.end_ns - self.start_ns, 1) / 1e9


def request_ttft(record: RequestRecord) -> int | None:
    return None if record.first_token_ns is None else record.first_token_ns - record.send_ns


def request_ttfc(record: RequestRecord) -> int | None:
    """Time to the first content token (later than TTFT when reasoning or a tool call came first)."""
    return None if record.first_content_ns is None else record.first_content_ns - record.send_ns


def request_e2e(record: RequestRecord) -> int | None:
    return None if record.end_ns is None else record.end_ns - record.send_ns


def request_tpot(record: RequestRecord) -> float | None:
    ttft, e2e, out = request_ttft(record), request_e2e(record), record.output_tokens
    if ttft is None or e2e is None or out < 2:
        return None
    return (e2e - ttft) / (out - 1)


def request_itls(record: RequestRecord) -> np.ndarray:
    return np.diff(np.asarray(record.token_ns, dtype=np.int64))


def sent_in(records: Sequence[RequestRecord], window: Window) -> list[RequestRecord]:
    """Requests sent inside the window (the ones a step's latencies and errors are about)."""
    return [r for r in records if window.start_ns <= r.send_ns < window.end_ns]


def pooled_itls(records: Sequence[RequestRecord]) -> np.ndarray:
    """Every gap between consecutive tokens of each stream, all streams pooled (ns)."""
    arrays = [request_itls(r) for r in records if len(r.token_ns) > 1]
    return np.concatenate(arrays) if arrays else np.empty(0, dtype=np.int64)


def split_objective(key: str) -> tuple[str, float]:
    """'itl_p99_9' -> ('itl', 99.9)."""
    metric, _, pct = key.partition("_p")
    return metric, float(pct.replace("_", "."))


def meets_slo(record: RequestRecord, slo: Mapping[str, float]) -> bool:
    """Whether one request met every per-request SLO (thresholds in ms, keys like 'ttft_p99').

    The percentile of a TTFT/TPOT/E2E objective applies to the run, so per request the
    threshold is simply the value; an ITL objective applies to the request's own gaps at the
    objective's percentile.
    """
    for key, limit_ms in slo.items():
        if not is_latency_objective(key):
            continue
        metric, pct = split_objective(key)
        limit_ns = limit_ms * 1e6
        if metric == "ttft":
            value = request_ttft(record)
        elif metric == "e2e":
            value = request_e2e(record)
        elif metric == "tpot":
            value = request_tpot(record)
        elif metric == "itl":
            gaps = request_itls(record)
            value = float(np.percentile(gaps, pct)) if gaps.size else None
        else:
            continue
        if value is not None and value > limit_ns:
            return False
    return True


def step_metrics(
    records: Sequence[RequestRecord], window: Window, slo: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """Every metric of one step: latency summaries, throughput, goodput, errors, send lag (the fields
    of load.document.StepMetrics)."""
    slo = slo or {}
    sent = sent_in(records, window)
    good = [r for r in sent if r.ok]
    ended = [r for r in records if r.ok and r.end_ns is not None and window.start_ns <= r.end_ns <= window.end_ns]
    seconds = window.seconds
    pcts = sorted(set(PERCENTILES) | {split_objective(key)[1] for key in slo if is_latency_objective(key)})
    ttft = [v for r in good if (v := request_ttft(r)) is not None]
    ttfc = [v for r in good if (v := request_ttfc(r)) is not None]
    e2e = [v for r in good if (v := request_e2e(r)) is not None]
    tpot = [v for r in good if (v := request_tpot(r)) is not None]
    itl = pooled_itls(good)
    lags = [r.send_ns - r.intended_ns for r in sent if r.intended_ns is not None]
    errors = Counter(r.error or f"HTTP {r.status}" for r in sent if not r.ok)
    failed = [r for r in sent if not r.ok]
    by_kind = Counter(r.error_kind or "other" for r in failed)
    examples: dict[str, str] = {}
    for r in failed:
        examples.setdefault(r.error_kind or "other", r.error or f"HTTP {r.status}")
    out_tokens = sum(r.output_tokens for r in ended)
    events_in_window = sum(1 for r in records for t in r.token_ns if window.start_ns <= t <= window.end_ns)
    mismatched = sum(1 for r in good if r.token_count_mismatch)
    return {
        "window_s": seconds,
        "requests_sent": len(sent),
        "requests_ok": len(good),
        "requests_failed": len(sent) - len(good),
        "error_rate": (len(sent) - len(good)) / len(sent) if sent else 0.0,
        "errors": dict(errors.most_common(10)),
        "errors_by_kind": {kind: by_kind[kind] for kind in (*ERROR_KINDS, "other") if by_kind[kind]},
        "error_examples": examples,
        "http_429_without_retry_after": sum(1 for r in failed if r.status == 429 and not r.retry_after),
        "stale_connection_retries": sum(1 for r in sent if r.retried),
        "requests_per_s": len(ended) / seconds,
        "output_tokens_per_s": out_tokens / seconds,
        "token_events_per_s": events_in_window / seconds,
        "goodput_per_s": sum(1 for r in good if meets_slo(r, slo)) / seconds if slo else None,
        "prompt_tokens_mean": _mean([r.usage_prompt for r in good if r.usage_prompt is not None]),
        "output_tokens_mean": _mean([r.output_tokens for r in good]),
        "token_count_mismatches": mismatched,
        **reasoning_metrics(good),
        **tool_call_metrics(good),
        "ttft_ms": summarize_ms(ttft, pcts),
        "ttfc_ms": summarize_ms(ttfc, pcts),
        "itl_ms": summarize_ms(itl, pcts),
        "tpot_ms": summarize_ms(np.asarray(tpot, dtype=np.float64), pcts),
        "e2e_ms": summarize_ms(e2e, pcts),
        "send_lag_ms": summarize_ms(lags) if lags else None,
        "requests_total": len(records),  # warm-up included
        "requests_refused": sum(1 for r in records if r.connection_refused),
    }


def tool_call_metrics(good: Sequence[RequestRecord]) -> dict[str, Any]:
    """How many successful requests were answered with tool calls, and how many calls they made."""
    return {"requests_with_tool_calls": sum(1 for r in good if r.tool_calls),
            "tool_calls_total": sum(r.tool_calls for r in good)}


def reasoning_metrics(good: Sequence[RequestRecord]) -> dict[str, Any]:
    """How many successful requests reasoned, and their reasoning tokens: the total, and the mean over
    every successful request (beside output_tokens_mean, which includes them)."""
    counts = [r.reasoning_tokens for r in good]
    return {"requests_with_reasoning": sum(1 for c in counts if c), "reasoning_tokens_total": sum(counts),
            "reasoning_tokens_mean": _mean(counts)}


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def cdf_points(samples_ms: Sequence[float], points: int = 200) -> tuple[list[float], list[float]]:
    """(value, fraction <= value) pairs for plotting a latency CDF."""
    values = np.sort(np.asarray(samples_ms, dtype=np.float64))
    if values.size == 0:
        return [], []
    idx = np.unique(np.linspace(0, values.size - 1, min(points, values.size)).astype(int))
    return values[idx].tolist(), ((idx + 1) / values.size).tolist()
