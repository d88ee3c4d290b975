"""Turn finished steps into the report document (what load.json holds and the HTML/CSV show)."""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from typing import Any

from load.health import loop_lag_summary
from load.metrics import FORMULAS, cdf_points, pooled_itls, request_e2e, request_ttft, sent_in
from load.outcome import StepOutcome
from load.timeline import step_timeline
from load.workload_metrics import FORMULAS as WORKLOAD_FORMULAS
from load.workload_metrics import workload_metrics


def step_document(outcome: StepOutcome) -> dict[str, Any]:
    """One step: its settings, every metric, SLO verdicts, client health, CDF points and the
    second-by-second timeline for plots."""
    good = [r for r in sent_in(outcome.records, outcome.window) if r.ok]
    cdf = {
        "ttft_ms": cdf_points([v / 1e6 for r in good if (v := request_ttft(r)) is not None]),
        "itl_ms": cdf_points((pooled_itls(good) / 1e6).tolist()),
        "e2e_ms": cdf_points([v / 1e6 for r in good if (v := request_e2e(r)) is not None]),
    }
    return {
        "step": outcome.spec.to_wire(),
        "label": outcome.spec.label,
        "level": outcome.spec.level,
        "metrics": outcome.metrics,
        "workload": workload_metrics(outcome.records, outcome.window),
        "slo": outcome.slo,
        "slo_met": all(v["met"] for v in outcome.slo),
        "warnings": outcome.warnings,
        "aborted": outcome.aborted,
        "stopped_early": outcome.stopped_early,
        "fidelity": outcome.fidelity.to_wire() if outcome.fidelity is not None else None,
        "client": {
            "workers": len(outcome.health),
            "cpu_fraction": [h["cpu_fraction"] for h in outcome.health],
            "loop_lag_ms": loop_lag_summary(outcome.health),
        },
        "cdf": {name: {"x": xs, "y": ys} for name, (xs, ys) in cdf.items()},
        "timeline": step_timeline(outcome.records),
    }


def calibration_errors(steps: Sequence[Mapping[str, Any]], ttft_ms: float, itl_ms: float) -> list[dict[str, Any]]:
    """Measured minus configured TTFT and ITL at p50 and p99, per step, against the mock's truth."""
    rows = []
    for step in steps:
        metrics = step["metrics"]
        for metric, truth in (("ttft", ttft_ms), ("itl", itl_ms)):
            for pct in ("p50", "p99"):
                measured = metrics[f"{metric}_ms"][pct]
                rows.append({"step": step["label"], "metric": metric, "percentile": pct, "truth_ms": truth,
                             "measured_ms": measured,
                             "error_ms": None if measured is None else measured - truth})
    return rows


def build_document(
    *,
    target: Mapping[str, Any],
    settings: Mapping[str, Any],
    steps: Sequence[Mapping[str, Any]],
    started_at: str,
    duration_s: float,
    calibration: Mapping[str, Any] | None = None,
    aborted: str | None = None,
    interrupted: bool = False,
    steps_not_run: Sequence[str] = (),
) -> dict[str, Any]:
    """The whole report: target, settings, formulas, steps, verdict and (optional) calibration.

    `aborted` says why the run ended early (the endpoint stopped answering, or Ctrl-C: then
    `interrupted`, and the report is partial); `steps_not_run` are the steps it never started.
    """
    return {
        "title": "chatspec load report",
        "target": dict(target),
        "settings": dict(settings),
        "started_at": started_at,
        "duration_s": duration_s,
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine()},
        "formulas": {**FORMULAS, **WORKLOAD_FORMULAS},
        "steps": list(steps),
        "slo_met": all(step["slo_met"] for step in steps),
        "client_limited": any(w.startswith("client-limited") for step in steps for w in step["warnings"]),
        # every step sent what was asked (or was cut short by the user's choice); else exit 2
        "fidelity_ok": all((step.get("fidelity") or {}).get("ok", True) for step in steps),
        "calibration": dict(calibration) if calibration else None,
        "aborted": aborted,
        "interrupted": interrupted,
        "partial": aborted is not None,
        "steps_not_run": list(steps_not_run),
    }
