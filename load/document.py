"""The load report (load.json) as typed records: the run (`LoadReport`), each of its steps
(`StepRecord`) and a step's metrics (`StepMetrics`), as the conformance side has its RunReport.

load.summary builds them from finished steps; the CLI, the reports, `python -m load compare` and the
benchmarks read their fields. `to_json()` gives exactly the document load.json has always held
(same keys in the same order), and `from_json()` reads one back, reports written by older versions
included (a key they lack takes its field's default).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from load.config import StepSpec
from load.document_parts import (
    CdfCurve,
    ClientHealth,
    LatencySummary,
    SloVerdict,
    Timeline,
    WorkloadSummary,
    optional_latency,
    plain,
    present_fields,
    record_json,
)
from load.fidelity import StepFidelity

LATENCIES = ("ttft_ms", "ttfc_ms", "itl_ms", "tpot_ms", "e2e_ms", "send_lag_ms")


@dataclass(kw_only=True)
class StepMetrics:
    """Every metric of one step (load.metrics.step_metrics; formulas in load.metrics.FORMULAS).
    Fields with a default are ones that reports written before them lack."""

    window_s: float
    requests_sent: int
    requests_ok: int
    requests_failed: int
    error_rate: float
    errors: dict[str, int]
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    error_examples: dict[str, str] = field(default_factory=dict)
    http_429_without_retry_after: int = 0
    stale_connection_retries: int = 0
    requests_per_s: float
    output_tokens_per_s: float
    token_events_per_s: float | None = None
    goodput_per_s: float | None
    prompt_tokens_mean: float | None = None
    output_tokens_mean: float | None = None
    token_count_mismatches: int = 0
    requests_with_reasoning: int = 0
    reasoning_tokens_total: int = 0
    reasoning_tokens_mean: float | None = None
    requests_with_tool_calls: int = 0
    tool_calls_total: int = 0
    ttft_ms: LatencySummary
    ttfc_ms: LatencySummary | None = None
    itl_ms: LatencySummary
    tpot_ms: LatencySummary
    e2e_ms: LatencySummary
    send_lag_ms: LatencySummary | None = None  # open loop only
    requests_total: int | None = None  # every request of the step, warm-up included
    requests_refused: int | None = None  # of those, connection refused

    def latency(self, metric: str) -> LatencySummary | None:
        """The summary of 'ttft', 'ttfc', 'itl', 'tpot', 'e2e' or 'send_lag' (None: not measured)."""
        return getattr(self, f"{metric}_ms")

    def to_json(self) -> dict[str, Any]:
        return record_json(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepMetrics:
        values = present_fields(cls, data)
        for name in LATENCIES:
            if name in values:
                values[name] = optional_latency(values[name])
        return cls(**values)


@dataclass
class StepRecord:
    """One step of the report: what it was asked to do, what it measured and how it was judged."""

    spec: StepSpec
    metrics: StepMetrics
    client: ClientHealth
    slo: list[SloVerdict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    aborted: str | None = None  # why the step (and the run) ended early
    stopped_early: str | None = None  # why a capacity search ended it before its duration
    fidelity: StepFidelity | None = None  # asked against scheduled, sent and done (older reports: none)
    workload: WorkloadSummary | None = None  # asked against served lengths (older reports: none)
    cdf: dict[str, CdfCurve] = field(default_factory=dict)  # 'ttft_ms', 'itl_ms', 'e2e_ms'
    timeline: Timeline | None = None  # second by second (older reports: none)
    server: dict[str, Any] | None = None  # scraped server series (--scrape-metrics only)

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def level(self) -> float:
        return self.spec.level

    @property
    def slo_met(self) -> bool:
        return all(verdict.met for verdict in self.slo)

    def to_json(self) -> dict[str, Any]:
        data = {"step": self.spec.to_wire(), "label": self.label, "level": self.level,
                "metrics": self.metrics.to_json(), "workload": plain(self.workload), "slo": plain(self.slo),
                "slo_met": self.slo_met, "warnings": list(self.warnings), "aborted": self.aborted,
                "stopped_early": self.stopped_early,
                "fidelity": self.fidelity.to_wire() if self.fidelity is not None else None,
                "client": self.client.to_json(), "cdf": plain(self.cdf), "timeline": plain(self.timeline)}
        return data if self.server is None else {**data, "server": self.server}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepRecord:
        fidelity, workload, timeline = data.get("fidelity"), data.get("workload"), data.get("timeline")
        return cls(spec=StepSpec.from_wire(data["step"]), metrics=StepMetrics.from_json(data["metrics"]),
                   client=ClientHealth.from_json(data["client"]),
                   slo=[SloVerdict.from_json(verdict) for verdict in data.get("slo", [])],
                   warnings=list(data.get("warnings", [])), aborted=data.get("aborted"),
                   stopped_early=data.get("stopped_early"),
                   fidelity=StepFidelity.from_wire(fidelity) if fidelity else None,
                   workload=WorkloadSummary.from_json(workload) if workload else None,
                   cdf={name: CdfCurve.from_json(curve) for name, curve in data.get("cdf", {}).items()},
                   timeline=Timeline.from_json(timeline) if timeline else None, server=data.get("server"))


@dataclass
class CalibrationError:
    """Measured minus configured latency of one step, metric and percentile (--calibrate)."""

    step: str
    metric: str
    percentile: str
    truth_ms: float
    measured_ms: float | None
    error_ms: float | None

    def to_json(self) -> dict[str, Any]:
        return record_json(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CalibrationError:
        return cls(**data)


@dataclass
class Calibration:
    """The mock engine's configured TTFT and ITL, and how far each step measured from them."""

    ttft_ms: float
    itl_ms: float
    errors: list[CalibrationError]

    def to_json(self) -> dict[str, Any]:
        return record_json(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibration:
        return cls(ttft_ms=data["ttft_ms"], itl_ms=data["itl_ms"],
                   errors=[CalibrationError.from_json(row) for row in data["errors"]])


@dataclass
class LoadReport:
    """A whole load run: target, settings, formulas, every step and the verdicts drawn from them.

    `aborted` says why the run ended early (the endpoint stopped answering, or Ctrl-C: then
    `interrupted`, and the report is partial); `steps_not_run` are the steps it never started.
    """

    target: dict[str, Any]
    settings: dict[str, Any]
    started_at: str
    duration_s: float
    machine: dict[str, str]
    formulas: dict[str, str]
    steps: list[StepRecord]
    title: str = "chatspec load report"
    calibration: Calibration | None = None
    aborted: str | None = None
    interrupted: bool = False
    steps_not_run: list[str] = field(default_factory=list)
    capacity: dict[str, Any] | None = None  # --find-capacity: load.capacity.CapacitySearch.result
    server_metrics: dict[str, Any] | None = None  # --scrape-metrics: what was scraped, and failures

    @property
    def slo_met(self) -> bool:
        return all(step.slo_met for step in self.steps)

    @property
    def client_limited(self) -> bool:
        return any(w.startswith("client-limited") for step in self.steps for w in step.warnings)

    @property
    def fidelity_ok(self) -> bool:
        """Every step sent what was asked (or was cut short by the user's choice); else exit 2."""
        return all(step.fidelity is None or step.fidelity.ok for step in self.steps)

    @property
    def partial(self) -> bool:
        return self.aborted is not None

    def to_json(self) -> dict[str, Any]:
        data = {"title": self.title, "target": self.target, "settings": self.settings, "started_at": self.started_at,
                "duration_s": self.duration_s, "machine": self.machine, "formulas": self.formulas,
                "steps": plain(self.steps), "slo_met": self.slo_met, "client_limited": self.client_limited,
                "fidelity_ok": self.fidelity_ok, "calibration": plain(self.calibration), "aborted": self.aborted,
                "interrupted": self.interrupted, "partial": self.partial, "steps_not_run": list(self.steps_not_run)}
        for name in ("capacity", "server_metrics"):  # present only in runs that have them
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        return data

    @classmethod
    def read(cls, path: Path | str) -> LoadReport:
        """The report in a load.json file."""
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoadReport:
        values = present_fields(cls, data)
        values["steps"] = [StepRecord.from_json(step) for step in data["steps"]]
        if values.get("calibration"):
            values["calibration"] = Calibration.from_json(values["calibration"])
        return cls(**values)

