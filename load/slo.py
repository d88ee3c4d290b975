"""Service-level objectives: parse `--slo ttft_p99=500,itl_p99=50` and judge a step against them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

METRICS = ("ttft", "itl", "tpot", "e2e")
_KEY = re.compile(r"^(ttft|itl|tpot|e2e)_p(\d{1,2}(?:[._]\d+)?)$")


ERROR_RATE = "error_rate"  # an objective on the share of failed requests (0..1), not a latency


def is_latency_objective(key: str) -> bool:
    """'ttft_p99' and the like (milliseconds, judged per request too), not 'error_rate'."""
    return key != ERROR_RATE


def parse_slo(text: str) -> dict[str, float]:
    """'ttft_p99=500,itl_p50=20,error_rate=0.01' -> {'ttft_p99': 500.0, 'itl_p50': 20.0, 'error_rate': 0.01}
    (latencies in milliseconds; error_rate a fraction of the requests sent, 0 to 1).

    Raises ValueError naming the bad item, so the CLI can say exactly what is wrong.
    """
    slo: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if key.strip() == ERROR_RATE and sep:
            try:
                rate = float(value)
            except ValueError:
                raise ValueError(f"bad SLO {item!r}: {value!r} is not a fraction") from None
            if not 0 <= rate < 1:
                raise ValueError(f"bad SLO {item!r}: error_rate is a fraction of requests, >= 0 and < 1")
            slo[ERROR_RATE] = rate
            continue
        match = _KEY.match(key.strip())
        if not sep or not match:
            raise ValueError(f"bad SLO {item!r}: expected METRIC_pNN=MS with METRIC one of {', '.join(METRICS)}, "
                             "or error_rate=FRACTION")
        pct = float(match.group(2).replace("_", "."))
        if not 0 < pct < 100:
            raise ValueError(f"bad SLO {item!r}: percentile must be between 0 and 100")
        try:
            limit = float(value)
        except ValueError:
            raise ValueError(f"bad SLO {item!r}: {value!r} is not a number of milliseconds") from None
        if limit <= 0:
            raise ValueError(f"bad SLO {item!r}: the limit must be > 0 ms")
        slo[f"{match.group(1)}_p{match.group(2).replace('.', '_')}"] = limit
    return slo


def judge(metrics: Mapping[str, Any], slo: Mapping[str, float]) -> list[dict[str, Any]]:
    """One verdict per objective: the step's measured percentile (or error rate) against its limit
    (the step's summaries include every percentile an objective names). A step with no samples
    misses a latency objective. `limit`/`measured` are in `unit`; latency verdicts also carry
    them as `limit_ms`/`measured_ms`."""
    verdicts = []
    for key, limit in slo.items():
        if not is_latency_objective(key):
            measured = metrics.get("error_rate") if metrics.get("requests_sent") else None
            verdicts.append({"objective": key, "limit": limit, "measured": measured, "unit": "fraction",
                             "met": measured is not None and measured <= limit})
            continue
        metric, _, pct = key.partition("_p")
        measured = (metrics.get(f"{metric}_ms") or {}).get(f"p{pct}")
        verdicts.append({"objective": key, "limit_ms": limit, "measured_ms": measured, "limit": limit,
                         "measured": measured, "unit": "ms", "met": measured is not None and measured <= limit})
    return verdicts
