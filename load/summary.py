"""Turn finished steps into the report (load.document: what load.json holds and the HTML/CSV show)."""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from typing import Any

from load.document import Calibration, CalibrationError, LoadReport, StepMetrics, StepRecord
from load.document_parts import CdfCurve, ClientHealth, LoopLag, SloVerdict, Timeline, WorkloadSummary
from load.health import loop_lag_summary
from load.metrics import FORMULAS, cdf_points, pooled_itls, request_e2e, request_ttft, sent_in
from load.outcome import StepOutcome
from load.timeline import step_timeline
from load.workload_metrics import FORMULAS as WORKLOAD_FORMULAS
from load.workload_metrics import workload_metrics


def step_document(outcome: StepOutcome) -> StepRecord:
    """One step: its settings, every metric, SLO verdicts, client health, CDF points and the
    second-by-second timeline for plots."""
    good = [r for r in sent_in(outcome.records, outcome.window) if r.ok]
    cdf = {
        "ttft_ms": cdf_points([v / 1e6 for r in good if (v := request_ttft(r)) is not None]),
        "itl_ms": cdf_points((pooled_itls(good) / 1e6).tolist()),
        "e2e_ms": cdf_points([v / 1e6 for r in good if (v := request_e2e(r)) is not None]),
    }
    lag = loop_lag_summary(outcome.health)
    return StepRecord(
        spec=outcome.spec,
        metrics=StepMetrics.from_json(outcome.metrics),
        client=ClientHealth(workers=len(outcome.health), cpu_fraction=[h["cpu_fraction"] for h in outcome.health],
                            loop_lag_ms=LoopLag(p50=lag["p50"], p99=lag["p99"], max=lag["max"])),
        slo=[SloVerdict.from_json(verdict) for verdict in outcome.slo],
        warnings=list(outcome.warnings),
        aborted=outcome.aborted,
        stopped_early=outcome.stopped_early,
        fidelity=outcome.fidelity,
        workload=WorkloadSummary.from_json(workload_metrics(outcome.records, outcome.window)),
        cdf={name: CdfCurve(x=xs, y=ys) for name, (xs, ys) in cdf.items()},
        timeline=Timeline.from_json(step_timeline(outcome.records)),
    )


def calibration_errors(steps: Sequence[StepRecord], ttft_ms: float, itl_ms: float) -> list[CalibrationError]:
    """Measured minus configured TTFT and ITL at p50 and p99, per step, against the mock's truth."""
    rows = []
    for step in steps:
        for metric, truth in (("ttft", ttft_ms), ("itl", itl_ms)):
            summary = step.metrics.latency(metric)
            for pct in ("p50", "p99"):
                measured = summary.stat(pct) if summary is not None else None
                rows.append(CalibrationError(step=step.label, metric=metric, percentile=pct, truth_ms=truth,
                                             measured_ms=measured,
                                             error_ms=None if measured is None else measured - truth))
    return rows


def build_document(
    *,
    target: Mapping[str, Any],
    settings: Mapping[str, Any],
    steps: Sequence[StepRecord],
    started_at: str,
    duration_s: float,
    calibration: Calibration | None = None,
    aborted: str | None = None,
    interrupted: bool = False,
    steps_not_run: Sequence[str] = (),
) -> LoadReport:
    """The whole report: target, settings, formulas, steps, verdict and (optional) calibration.

    `aborted` says why the run ended early (the endpoint stopped answering, or Ctrl-C: then
    `interrupted`, and the report is partial); `steps_not_run` are the steps it never started.
    """
    return LoadReport(
        target=dict(target),
        settings=dict(settings),
        started_at=started_at,
        duration_s=duration_s,
        machine={"python": platform.python_version(), "platform": platform.platform(),
                 "processor": platform.processor() or platform.machine()},
        formulas={**FORMULAS, **WORKLOAD_FORMULAS},
        steps=list(steps),
        calibration=calibration,
        aborted=aborted,
        interrupted=interrupted,
        steps_not_run=list(steps_not_run),
    )
