"""JUnit XML for CI systems: one testsuite per feature, one testcase per check."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from reports.model import CheckResult, RunReport


def _details(result: CheckResult) -> str:
    parts = [result.message]
    if result.request is not None:
        parts.append(f"request: {result.request}")
    if result.response_excerpt:
        parts.append(f"response:\n{result.response_excerpt}")
    if result.curl:
        parts.append(f"reproduce:\n{result.curl}")
    return "\n\n".join(parts)


def write_junit(report: RunReport, path: Path | str) -> Path:
    """Write `report` as JUnit XML at `path`."""
    counts = report.counts()
    root = ET.Element("testsuites", name=report.title, tests=str(len(report.results)),
                      failures=str(counts["failed"]), errors=str(counts["error"]),
                      skipped=str(counts["skipped"] + counts["not_supported"]), time=f"{report.duration_s:.3f}")
    suites: dict[str, ET.Element] = {}
    for feature, row in report.by_feature().items():
        suites[feature] = ET.SubElement(
            root, "testsuite", name=feature, tests=str(sum(row.values())), failures=str(row["failed"]),
            errors=str(row["error"]), skipped=str(row["skipped"] + row["not_supported"]),
            time=f"{sum(r.duration_s for r in report.results if r.feature == feature):.3f}",
        )
    for result in report.results:
        case = ET.SubElement(suites[result.feature], "testcase", classname=result.feature, name=result.id,
                             time=f"{result.duration_s:.3f}")
        if result.outcome == "failed":
            ET.SubElement(case, "failure", message=result.message[:500]).text = _details(result)
        elif result.outcome == "error":
            ET.SubElement(case, "error", message=result.message[:500]).text = _details(result)
        elif result.outcome == "not_supported":
            ET.SubElement(case, "skipped", message=f"not supported: {result.message}")
        elif result.outcome == "skipped":
            ET.SubElement(case, "skipped", message=result.message)
    path = Path(path)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path
