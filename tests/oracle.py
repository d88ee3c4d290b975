"""Reading the reference server's `--record` file: what the endpoint really received, and when.

The load tool's own counters cannot testify about themselves; these helpers turn the server's
record (reference_server/recording.py) into evidence a test can hold a run against: arrivals
matched to the times they were meant for, requests in flight over time, and the prompts sent.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def settle(path: Path, settle_s: float = 0.3, timeout_s: float = 10.0) -> None:
    """Wait until `path` has not grown for `settle_s` (at most `timeout_s`): a request is written when
    it ends, and one whose client has just left when the server notices."""
    deadline = time.monotonic() + timeout_s
    size, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_size = path.stat().st_size if path.exists() else 0
        if now_size != size:
            size, since = now_size, time.monotonic()
        elif time.monotonic() - since >= settle_s:
            return
        time.sleep(0.05)


def parse_lines(lines: Iterable[str]) -> list[dict[str, Any]]:
    """Records from --record lines, in arrival order."""
    return sorted((json.loads(line) for line in lines if line.strip()), key=lambda r: r["arrival_ns"])


def read_records(path: Path | str, settle_s: float = 0.3, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Every record in `path`, in arrival order, once the file has settled (a missing file: none)."""
    path = Path(path)
    settle(path, settle_s, timeout_s)
    return parse_lines(path.read_text(encoding="utf-8").splitlines()) if path.exists() else []


@dataclass(frozen=True)
class RecordFile:
    """A --record file several runs append to (a module's server): each run reads only its own lines."""

    path: Path

    def mark(self) -> int:
        """How many records the file holds now (take it before a run)."""
        return self.path.read_bytes().count(b"\n") if self.path.exists() else 0

    def since(self, mark: int) -> list[dict[str, Any]]:
        """The records written after `mark`, in arrival order, once the file has settled."""
        settle(self.path)
        return parse_lines(self.path.read_text(encoding="utf-8").splitlines()[mark:]) if self.path.exists() else []


def load_requests(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The requests a load run's users sent: the streamed ones. The load tool's preflight and its
    prompt-length probes are single non-streamed requests (`max_tokens: 1`) made before the run."""
    return [r for r in records if isinstance(r.get("body"), dict) and r["body"].get("stream") is True]


def prompt_text(body: dict[str, Any]) -> str:
    """The prompt of a chat body: every message's content, one per line, in order."""
    parts = []
    for message in body.get("messages") or []:
        content = message.get("content") or ""
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        parts.append(str(content))
    return "\n".join(parts)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by the nearest-rank rule: a value that occurred."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass(frozen=True)
class Match:
    """Arrivals paired with intended times: `errors_s[i]` is how late the i-th was, once the two
    clocks are aligned by `offset_ns` (the server's clock minus the plan's)."""

    offset_ns: int
    errors_s: list[float]

    @property
    def p90_s(self) -> float:
        """Nine in ten arrived at most this late."""
        return percentile(self.errors_s, 90)

    def late(self, limit_s: float) -> int:
        """How many arrived more than `limit_s` after their time."""
        return sum(1 for error in self.errors_s if error > limit_s)

    @property
    def max_s(self) -> float:
        """The latest arrival's lateness."""
        return max(self.errors_s)

    def describe(self) -> str:
        """For an assertion's message: the spread and the worst few."""
        worst = sorted(((e, i) for i, e in enumerate(self.errors_s)), reverse=True)[:5]
        return (f"{len(self.errors_s)} arrivals: p90 {self.p90_s * 1e3:.1f} ms late, max {self.max_s * 1e3:.1f} ms; "
                f"worst (ms, index): {[(round(e * 1e3, 1), i) for e, i in worst]}")


# How late an arrival may be, once the clocks are aligned, in tests that must hold on a loaded 2-core
# machine: they catch requests sent seconds late or never; tight accuracy is for benchmarks.
LATE_S = 0.030  # at most one in ten arrivals (at least one allowed) later than this
LATEST_S = 0.250  # and none later than this


def assert_on_time(match: Match, late_s: float = LATE_S, latest_s: float = LATEST_S) -> None:
    """At most one in ten arrivals (one, in a short run: a step's first request goes out as its users
    start) later than `late_s`, and none later than `latest_s`."""
    allowed = max(1, len(match.errors_s) // 10)
    assert match.late(late_s) <= allowed and match.max_s <= latest_s, match.describe()


def match_arrivals(arrivals_ns: Sequence[int], intended_s: Sequence[float]) -> Match:
    """Pair the k-th earliest arrival with the k-th earliest intended time and align the clocks.

    The offset between the server's clock and the plan's is unknown, but nothing can arrive before
    it is meant to, so it is the smallest (arrival - intended); each error is then >= 0. A request
    sent late, or one missing (which shifts every later pairing), shows as a large error.
    """
    if len(arrivals_ns) != len(intended_s):
        raise ValueError(f"{len(arrivals_ns)} arrivals for {len(intended_s)} intended times")
    if not arrivals_ns:
        raise ValueError("nothing to match")
    pairs = list(zip(sorted(arrivals_ns), sorted(intended_s), strict=True))
    return match_pairs(pairs)


def match_pairs(pairs: Sequence[tuple[int, float]]) -> Match:
    """Like match_arrivals, for pairs already known to belong together: (arrival_ns, intended_s)."""
    if not pairs:
        raise ValueError("nothing to match")
    offset = min(arrival - round(intended * 1e9) for arrival, intended in pairs)
    return Match(offset, [(arrival - round(intended * 1e9) - offset) / 1e9 for arrival, intended in pairs])


@dataclass(frozen=True)
class Concurrency:
    """Requests in flight at the server over a window: time-weighted mean, the most at once, and
    the fraction of the window spent above a given level (see in_flight)."""

    mean: float
    max: int
    above_share: float


def in_flight(records: Iterable[dict[str, Any]], start_ns: int, end_ns: int, above: int | None = None) -> Concurrency:
    """How many requests the server held between `start_ns` and `end_ns`, from each record's
    [arrival_ns, end_ns). `above`: also the share of the window with more than that many."""
    if end_ns <= start_ns:
        raise ValueError("empty window")
    events: list[tuple[int, int]] = []
    for record in records:
        begin, finish = max(record["arrival_ns"], start_ns), min(record["end_ns"], end_ns)
        if begin < finish:
            events += [(begin, 1), (finish, -1)]
    events.sort()  # at equal times the end (-1) comes first: back-to-back requests never overlap
    level, peak, area, over, last = 0, 0, 0, 0, start_ns
    for when, change in events:
        area += level * (when - last)
        if above is not None and level > above:
            over += when - last
        level += change
        peak = max(peak, level)
        last = when
    span = end_ns - start_ns
    return Concurrency(mean=area / span, max=peak, above_share=over / span)


def gaps_s(times_ns: Sequence[int]) -> list[float]:
    """Seconds between consecutive times, in order."""
    ordered = sorted(times_ns)
    return [(b - a) / 1e9 for a, b in zip(ordered, ordered[1:], strict=False)]
