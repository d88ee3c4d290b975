"""Open-loop arrival schedules: when each request is meant to be sent, independent of replies.

Closed-loop users send when their last reply came, so a slow server slows the offered load and
hides queueing; an open-loop schedule keeps sending on time, and any request the client could
not send on time shows up as send lag (actual - intended) in the report.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

ARRIVALS = ("poisson", "constant", "gamma")


def intended_offsets_s(
    rate: float, arrival: str, *, seed: int = 0, gamma_shape: float = 0.5, limit: int | None = None
) -> Iterator[float]:
    """Seconds from the schedule's start at which requests are due, forever or `limit` of them.

    poisson: exponential gaps (mean 1/rate); constant: 1/rate apart; gamma: gamma gaps with the
    given shape and mean 1/rate (shape < 1 is burstier than Poisson, > 1 smoother).
    """
    if rate <= 0:
        raise ValueError("rate must be > 0")
    if arrival not in ARRIVALS:
        raise ValueError(f"arrival must be one of {', '.join(ARRIVALS)}")
    if arrival == "gamma" and gamma_shape <= 0:
        raise ValueError("gamma shape must be > 0")
    rng = np.random.default_rng(seed)
    t = 0.0
    count = 0
    while limit is None or count < limit:
        if arrival == "constant":
            gaps = np.full(1024, 1.0 / rate)
        elif arrival == "poisson":
            gaps = rng.exponential(1.0 / rate, 1024)
        else:
            gaps = rng.gamma(gamma_shape, 1.0 / (rate * gamma_shape), 1024)
        for gap in gaps:
            if limit is not None and count >= limit:
                return
            yield t
            t += float(gap)
            count += 1
