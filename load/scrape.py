"""`--scrape-metrics URL`: sample any Prometheus endpoint during a run, for the server's side of it.

A greenlet in the load process fetches the text exposition every `interval_s` and keeps, per
chosen series, the sum over its label sets (one number per series per scrape). A series is named
with or without its prefix: `num_requests_waiting` matches `vllm:num_requests_waiting` and
`chatspec:num_requests_waiting`. Counters (`..._total`) are turned into per-second rates for the
plots. Samples are stamped on this process's monotonic clock, the clock a step's start is taken
on, so the report draws them on the same time axis as the client's latencies.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

DEFAULT_SERIES = ("num_requests_running", "num_requests_waiting", "generation_tokens_total")


def parse_series(text: str) -> list[str]:
    """'a, b' -> ['a', 'b']; ValueError when empty."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError("no series named")
    return names


def fetch(url: str, timeout_s: float, headers: dict[str, str] | None = None) -> str:
    """The exposition text; RuntimeError with a one-line reason when it cannot be had."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout_s) as reply:
            return reply.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise RuntimeError(f"cannot scrape {url}: {getattr(exc, 'reason', exc)}") from None


def matches(sample_name: str, series: str) -> bool:
    return sample_name == series or sample_name.endswith(":" + series)


def pick(text: str, series: Sequence[str]) -> dict[str, float]:
    """Each chosen series' value in one exposition: the sum over its label sets (absent: left out)."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for name in series:
                if matches(sample.name, name):
                    values[name] = values.get(name, 0.0) + float(sample.value)
    return values


@dataclass
class Scrapes:
    """What a scraper collected: (monotonic time, {series: value}) pairs, and the failures."""

    url: str
    series: list[str]
    headers: dict[str, str] = field(default_factory=dict)  # the target's auth, when on the target's host
    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    failures: int = 0
    last_error: str | None = None

    def between(self, start: float, end: float) -> dict[str, Any]:
        """The samples of [start, end) with times relative to `start`; counters as rates per second."""
        inside = [(t - start, values) for t, values in self.samples if start <= t < end]
        out: dict[str, Any] = {"t": [t for t, _ in inside], "series": {}, "rates": []}
        for name in self.series:
            values = [v.get(name) for _, v in inside]
            if not any(v is not None for v in values):
                continue
            if name.endswith("_total"):
                rate: list[float | None] = [None]
                for (t0, _), (t1, _), v0, v1 in zip(inside, inside[1:], values, values[1:], strict=False):
                    ok = v0 is not None and v1 is not None and t1 > t0 and v1 >= v0
                    rate.append((v1 - v0) / (t1 - t0) if ok else None)  # type: ignore[operator]
                out["series"][f"{name} /s"] = rate
                out["rates"].append(f"{name} /s")
            else:
                out["series"][name] = values
        return out


def scrape_loop(scrapes: Scrapes, interval_s: float, timeout_s: float) -> None:
    """Forever (run it in a greenlet and kill it): one scrape every `interval_s`, on a fixed grid."""
    next_at = time.monotonic()
    while True:
        stamp = time.monotonic()
        try:
            scrapes.samples.append((stamp, pick(fetch(scrapes.url, timeout_s, scrapes.headers), scrapes.series)))
        except (RuntimeError, ValueError) as exc:
            scrapes.failures += 1
            scrapes.last_error = str(exc)
        next_at += interval_s
        time.sleep(max(0.0, next_at - time.monotonic()))  # gevent-patched: yields to the users
