"""Reports shared by the conformance suite and the load tests: JUnit XML, JSON, self-contained HTML."""

from __future__ import annotations

from pathlib import Path

from reports.html import write_html
from reports.json_report import write_json
from reports.junit import write_junit
from reports.model import OUTCOMES, SEVERITIES, CheckResult, RunReport
from reports.summary_md import write_summary

__all__ = ["OUTCOMES", "SEVERITIES", "CheckResult", "RunReport", "write_all", "write_html", "write_json", "write_junit",
           "write_summary"]


def write_all(report: RunReport, directory: Path | str) -> dict[str, Path]:
    """Write junit.xml, conformance.json, conformance.html and summary.md (Markdown, for a CI job
    summary or a PR comment) into `directory` (created if needed)."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "junit": write_junit(report, folder / "junit.xml"),
        "json": write_json(report, folder / "conformance.json"),
        "html": write_html(report, folder / "conformance.html"),
        "summary": write_summary(report, folder / "summary.md"),
    }
