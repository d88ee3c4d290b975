"""The server's own counts, read back from its /metrics (docs/metrics.md).

Benchmarks and tests judge the server by what it recorded (answers by status code, first tokens,
answers in full, tokens generated, the running and waiting gauges), not by a client's tally or
a script's plan. Sums over label sets other than the status code.
"""

from __future__ import annotations

import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

# /metrics sample (prefix dropped) -> the count it gives
SAMPLES = {"time_to_first_token_seconds_count": "first_tokens", "request_success_total": "answered_in_full",
           "generation_tokens_total": "generation_tokens", "num_requests_running": "running",
           "num_requests_waiting": "waiting"}
COUNTERS = ("first_tokens", "answered_in_full", "generation_tokens")


def read_counts(text: str) -> dict[str, Any]:
    """The counts in one Prometheus text exposition of a chatspec server."""
    counts: dict[str, Any] = {"responses_by_code": {}, **{key: 0 for key in SAMPLES.values()}}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removeprefix("chatspec:")
            if name == "http_responses_total":
                code = sample.labels["code"]
                counts["responses_by_code"][code] = counts["responses_by_code"].get(code, 0) + int(sample.value)
            elif name in SAMPLES:
                counts[SAMPLES[name]] += int(sample.value)
    return counts


def server_counts(base_url: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The counts of the server at `base_url` (its root: /metrics needs no key)."""
    with urllib.request.urlopen(base_url.rstrip("/") + "/metrics", timeout=timeout_s) as answer:
        return read_counts(answer.read().decode("utf-8"))


def counts_since(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What the counters grew by between two readings (codes that did not grow left out); the
    gauges as they are at `after`."""
    codes = {code: n - before["responses_by_code"].get(code, 0) for code, n in after["responses_by_code"].items()}
    return {"responses_by_code": {code: n for code, n in sorted(codes.items()) if n},
            **{key: after[key] - before[key] for key in COUNTERS},
            "running": after["running"], "waiting": after["waiting"]}
