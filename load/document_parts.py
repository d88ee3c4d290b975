"""The pieces of a load report's step (load.document) as typed records: latency and length
summaries, SLO verdicts, the client's health, CDF curves, the timeline and the workload findings.

Each has `to_json()` giving exactly the dict load.json has always held (same keys, same order) and
`from_json()` reading it back, tolerant of the keys reports written before them lack.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

Number = float | int


def plain(value: Any) -> Any:
    """A record, a list of them, or a dict of them as JSON-ready data; anything else as it is."""
    if hasattr(value, "to_json"):
        return value.to_json()
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


def record_json(record: Any) -> dict[str, Any]:
    """Every field of a record in field order (the order load.json has its keys in)."""
    return {f.name: plain(getattr(record, f.name)) for f in fields(record)}


def present_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The keys of `data` that are fields of `cls` (a missing field takes its default)."""
    return {f.name: data[f.name] for f in fields(cls) if f.name in data}


@dataclass
class LatencySummary:
    """count, mean, min and max of a latency in ms, and its percentiles by key ('p50', 'p99_9')."""

    count: int
    mean: float | None
    min: float | None
    max: float | None
    percentiles: dict[str, float | None] = field(default_factory=dict)

    @property
    def p50(self) -> float | None:
        return self.percentiles.get("p50")

    @property
    def p90(self) -> float | None:
        return self.percentiles.get("p90")

    @property
    def p99(self) -> float | None:
        return self.percentiles.get("p99")

    def stat(self, key: str) -> Number | None:
        """'count', 'mean', 'min', 'max' or a percentile key; None when absent."""
        return getattr(self, key) if key in ("count", "mean", "min", "max") else self.percentiles.get(key)

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "min": self.min, "max": self.max, **self.percentiles}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LatencySummary:
        return cls(count=data["count"], mean=data["mean"], min=data["min"], max=data["max"],
                   percentiles={key: value for key, value in data.items() if key.startswith("p")})


def optional_latency(data: dict[str, Any] | None) -> LatencySummary | None:
    return None if data is None else LatencySummary.from_json(data)


@dataclass
class SloVerdict:
    """One objective against what the step measured. Latencies are in ms and also written as
    `limit_ms`/`measured_ms`; an error_rate objective is a fraction."""

    objective: str
    limit: float
    measured: float | None
    met: bool
    unit: str = "ms"

    def to_json(self) -> dict[str, Any]:
        in_ms = {"limit_ms": self.limit, "measured_ms": self.measured} if self.unit == "ms" else {}
        return {"objective": self.objective, **in_ms, "limit": self.limit, "measured": self.measured,
                "unit": self.unit, "met": self.met}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SloVerdict:
        """Older reports had only `limit_ms`/`measured_ms` (every objective was a latency)."""
        return cls(objective=data["objective"], limit=data["limit"] if "limit" in data else data["limit_ms"],
                   measured=data["measured"] if "measured" in data else data.get("measured_ms"),
                   met=data["met"], unit=data.get("unit", "ms"))


@dataclass
class LoopLag:
    """How late the load processes' event loops woke, over all of them (ms; None: not measured)."""

    p50: float | None
    p99: float | None
    max: float | None

    def to_json(self) -> dict[str, Any]:
        return record_json(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoopLag:
        return cls(**data)


@dataclass
class ClientHealth:
    """The load processes of a step: how many, each one's share of a CPU core, their loop lag."""

    workers: int
    cpu_fraction: list[float]
    loop_lag_ms: LoopLag

    def to_json(self) -> dict[str, Any]:
        return record_json(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClientHealth:
        return cls(workers=data["workers"], cpu_fraction=list(data["cpu_fraction"]),
                   loop_lag_ms=LoopLag.from_json(data["loop_lag_ms"]))


@dataclass
class CdfCurve:
    """Points of a latency CDF: values (ms) and the fraction of samples at or below each."""

    x: list[float]
    y: list[float]

    def to_json(self) -> dict[str, Any]:
        return record_json(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CdfCurve:
        return cls(x=list(data["x"]), y=list(data["y"]))


@dataclass
class Timeline:
    """A step second by second (load.timeline): one value per bin in each series."""

    bin_s: float
    t: list[float]
    inflight: list[float]
    output_tokens_per_s: list[float]
    ttft_p50_ms: list[float | None]
    ttft_p99_ms: list[float | None]
    itl_p50_ms: list[float | None]
    itl_p99_ms: list[float | None]
    sent: list[int]
    failed: list[int]

    def to_json(self) -> dict[str, Any]:
        return record_json(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Timeline:
        return cls(**data)


@dataclass
class LengthSummary:
    """count, mean, median, min and max of a length in tokens (None where there were none)."""

    count: int
    mean: float | None
    p50: float | None
    min: int | None
    max: int | None

    def to_json(self) -> dict[str, Any]:
        return record_json(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LengthSummary:
        return cls(**data)


@dataclass
class LengthComparison:
    """Asked against served lengths: both summaries, and histograms over the same bin edges."""

    requested: LengthSummary
    served: LengthSummary
    edges: list[float]
    requested_counts: list[int]
    served_counts: list[int]

    def to_json(self) -> dict[str, Any]:
        return record_json(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LengthComparison:
        return cls(requested=LengthSummary.from_json(data["requested"]),
                   served=LengthSummary.from_json(data["served"]), edges=list(data["edges"]),
                   requested_counts=list(data["requested_counts"]), served_counts=list(data["served_counts"]))


@dataclass
class PrefixSharing:
    """Prompt tokens a perfect prefix cache could skip, of all prompt tokens (ratio None: none)."""

    reusable_prompt_tokens: int
    prompt_tokens: int
    ratio: float | None

    def to_json(self) -> dict[str, Any]:
        return record_json(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PrefixSharing:
        return cls(**data)


@dataclass
class TurnSummary:
    """The successful requests of one conversation turn: how many, their latencies, prompt length."""

    turn: int
    requests: int
    ttft_ms: LatencySummary
    e2e_ms: LatencySummary
    prompt_tokens_mean: float | None

    def to_json(self) -> dict[str, Any]:
        return record_json(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TurnSummary:
        return cls(turn=data["turn"], requests=data["requests"], ttft_ms=LatencySummary.from_json(data["ttft_ms"]),
                   e2e_ms=LatencySummary.from_json(data["e2e_ms"]), prompt_tokens_mean=data["prompt_tokens_mean"])


@dataclass
class WorkloadSummary:
    """What the workload asked for against what was served (load.workload_metrics)."""

    input_tokens: LengthComparison
    output_tokens: LengthComparison
    output_short: int
    prefix_sharing: PrefixSharing | None = None
    per_turn: list[TurnSummary] | None = None

    def to_json(self) -> dict[str, Any]:
        return record_json(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkloadSummary:
        sharing, turns = data.get("prefix_sharing"), data.get("per_turn")
        return cls(input_tokens=LengthComparison.from_json(data["input_tokens"]),
                   output_tokens=LengthComparison.from_json(data["output_tokens"]), output_short=data["output_short"],
                   prefix_sharing=PrefixSharing.from_json(sharing) if sharing else None,
                   per_turn=[TurnSummary.from_json(turn) for turn in turns] if turns is not None else None)
