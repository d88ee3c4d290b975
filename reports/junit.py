"""JUnit XML for CI systems: one testsuite per feature, one testcase per check.

`not_supported` becomes `<skipped message="not supported: ...">`, so CI tools never count it as
a pass. Each testcase carries its severity (a `severity` property, and the failure's `type`:
must or should); a should-level failure is a `<failure>` too, whether or not it fails the run
(the exit code and the `fail_on` property of `<testsuites>` say which do), and so is a failure
a baseline expected: its `baseline` property says "expected" (else "new") and its message the reason.
Text from responses can hold characters XML 1.0 cannot carry (control characters, lone surrogates); they are
written as visible escapes so the file always parses.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from reports.model import CheckResult, RunReport

MESSAGE_LIMIT = 500  # characters of the message attribute; the full text is in the element body
# everything outside XML 1.0's Char production
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_safe(text: str) -> str:
    """`text` with every character XML 1.0 forbids replaced by a visible escape such as `\\x1b`."""
    return _NOT_XML.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace").decode("ascii"), text)


def _details(result: CheckResult) -> str:
    parts = [result.message]
    if result.spec_note:
        parts.append(f"spec: {result.spec_note}")
    if result.request is not None:
        parts.append("request:\n" + json.dumps(result.request, indent=2, ensure_ascii=False, default=str))
    if result.response_excerpt:
        parts.append(f"response:\n{result.response_excerpt}")
    if result.curl:
        parts.append(f"reproduce:\n{result.curl}")
    return xml_safe("\n\n".join(parts))


def build_junit(report: RunReport) -> ET.Element:
    """The `<testsuites>` tree for `report`."""
    counts = report.counts()
    root = ET.Element("testsuites", name=xml_safe(report.title), tests=str(len(report.results)),
                      failures=str(counts["failed"]), errors=str(counts["error"]),
                      skipped=str(counts["skipped"] + counts["not_supported"]), time=f"{report.duration_s:.3f}")
    ET.SubElement(ET.SubElement(root, "properties"), "property", name="fail_on", value=report.fail_on)
    suites: dict[str, ET.Element] = {}
    for feature, row in report.by_feature().items():
        suites[feature] = ET.SubElement(
            root, "testsuite", name=xml_safe(feature), tests=str(sum(row.values())), failures=str(row["failed"]),
            errors=str(row["error"]), skipped=str(row["skipped"] + row["not_supported"]),
            time=f"{sum(r.duration_s for r in report.results if r.feature == feature):.3f}",
            timestamp=xml_safe(report.started_at),
        )
    for result in report.results:
        case = ET.SubElement(suites[result.feature], "testcase", classname=xml_safe(result.feature),
                             name=xml_safe(result.id), time=f"{result.duration_s:.3f}")
        properties = ET.SubElement(case, "properties")
        ET.SubElement(properties, "property", name="severity", value=result.severity)
        message = xml_safe(result.message[:MESSAGE_LIMIT])
        marked = xml_safe(f"[{result.severity}] {result.message}"[:MESSAGE_LIMIT])
        if result.broken:  # new, or expected by the baseline (with its reason)
            ET.SubElement(properties, "property", name="baseline", value=result.baseline or "new")
            if result.cause:
                ET.SubElement(properties, "property", name="cause", value=xml_safe(result.cause))
            if result.baseline == "expected":
                marked = xml_safe(f"[{result.severity}] [expected: {result.baseline_reason}] {result.message}"
                                  [:MESSAGE_LIMIT])
        if result.outcome == "failed":
            ET.SubElement(case, "failure", message=marked, type=result.severity).text = _details(result)
        elif result.outcome == "error":
            ET.SubElement(case, "error", message=marked, type=result.severity).text = _details(result)
        elif result.outcome == "not_supported":
            ET.SubElement(case, "skipped", message=f"not supported: {message}")
        elif result.outcome == "skipped":
            ET.SubElement(case, "skipped", message=message)
    if report.aborted is not None:  # CI must see a cut-short run as an error, never as fewer tests
        suite = ET.SubElement(root, "testsuite", name="run", tests="1", failures="0", errors="1", skipped="0",
                              time="0.000", timestamp=xml_safe(report.started_at))
        case = ET.SubElement(suite, "testcase", classname="run", name="run completed", time="0.000")
        body = f"{report.aborted}\n\nchecks not run ({len(report.not_run)}):\n" + "\n".join(report.not_run)
        ET.SubElement(case, "error", message=xml_safe(report.aborted[:MESSAGE_LIMIT]), type="aborted").text = (
            xml_safe(body))
        root.set("tests", str(len(report.results) + 1))
        root.set("errors", str(counts["error"] + 1))
    return root


def write_junit(report: RunReport, path: Path | str) -> Path:
    """Write `report` as JUnit XML at `path`."""
    path = Path(path)
    tree = ET.ElementTree(build_junit(report))
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)
    return path
