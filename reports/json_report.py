"""The machine-readable report (`conformance.json`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reports.model import RunReport


def report_json(report: RunReport) -> dict[str, Any]:
    """The report as plain JSON data; failure evidence only where a check failed."""
    checks = []
    for result in report.results:
        item: dict[str, Any] = {
            "id": result.id, "feature": result.feature, "category": result.category,
            "severity": result.severity, "outcome": result.outcome, "duration_s": result.duration_s,
            "message": result.message,
        }
        if result.spec_note:
            item["spec_note"] = result.spec_note
        if result.outcome in ("failed", "error"):
            item.update(request=result.request, response_excerpt=result.response_excerpt, curl=result.curl,
                        baseline=result.baseline or "new")
            if result.baseline_reason:
                item["baseline_reason"] = result.baseline_reason
            if result.cause:
                item["cause"] = result.cause
        checks.append(item)
    return {
        "title": report.title, "target": report.target, "started_at": report.started_at,
        "duration_s": report.duration_s, "verdict": report.verdict().lower(),
        "fail_on": report.fail_on, "aborted": report.aborted, "not_run": report.not_run,
        "summary": report.counts(), "by_severity": report.by_severity(), "by_feature": report.by_feature(),
        "notes": report.notes, "checks": checks, "shared_causes": report.shared_causes(),
        "baseline": None if report.baseline is None else {
            "file": report.baseline, "expected": [r.id for r in report.expected()],
            "new": [r.id for r in report.results if r.broken and r.baseline == "new"], "fixed": report.fixed},
    }


def write_json(report: RunReport, path: Path | str) -> Path:
    """Write `report` as JSON at `path`."""
    path = Path(path)
    text = json.dumps(report_json(report), indent=2, ensure_ascii=False, default=str) + "\n"
    # A lone surrogate (from bytes decoded with surrogateescape) cannot be UTF-8 encoded; inside a
    # JSON string its backslash escape "\udcff" is itself valid JSON, so the file always loads.
    path.write_text(text, encoding="utf-8", errors="backslashreplace")
    return path
