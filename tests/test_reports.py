"""Report writers: JUnit counts, JSON structure, HTML that escapes data and reads in a browser."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from reports import CheckResult, RunReport, write_all, write_html, write_json, write_junit

CHROMIUM = "/usr/bin/chromium"
EVIL = "<script>alert('x')</script>"
FEATURES = ("streaming", "usage", "seed", "auth", "logprobs")


def _report() -> RunReport:
    return RunReport(
        title="chatspec conformance",
        target={"base_url": "http://127.0.0.1:1", "model": "m", "profile": "documented"},
        started_at="2026-11-25T00:00:00+00:00",
        duration_s=1.5,
        results=[
            CheckResult("streaming.done_once_last", "streaming", "framing", "passed", 0.1),
            CheckResult("usage.totals_add_up", "usage", "semantic", "failed", 0.2, message="2 + 3 != 6",
                        request={"messages": [{"role": "user", "content": EVIL}]},
                        response_excerpt=f"HTTP 200 application/json\n{EVIL}",
                        curl="curl -sS http://127.0.0.1:1 -d '{\"a\": \"<b>&\"}'",
                        spec_note="usage.total_tokens = prompt + completion"),
            CheckResult("seed.repeat_nonstream", "seed", "semantic", "error", 0.3, message="KeyError: 'choices'"),
            CheckResult("auth.missing_key", "auth", "error", "skipped", 0.0, message="no API key given"),
            CheckResult("logprobs.shape", "logprobs", "semantic", "not_supported", 0.0, message="declared"),
            CheckResult("streaming.content_type", "streaming", "framing", "passed", 0.05),
        ],
        notes=[{"param": "n", "doc-says": "1 < x < 128", "decision": "n >= 1 <inclusive>"}],
    )


class _Tables(HTMLParser):
    """Collects the rows (lists of cell texts) of each table with an id."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.scripts = 0
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts += 1
        if tag == "table":
            self._table = dict(attrs).get("id")
            if self._table:
                self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._table and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_counts_by_feature_and_round_trip() -> None:
    report = _report()
    assert report.counts() == {"passed": 2, "failed": 1, "error": 1, "skipped": 1, "not_supported": 1}
    assert report.by_feature()["streaming"] == {"passed": 2, "failed": 0, "error": 0, "skipped": 0,
                                                "not_supported": 0}
    assert report.by_feature()["logprobs"]["passed"] == 0
    assert list(report.by_feature()) == list(FEATURES)
    assert report.failed()
    data = json.loads(json.dumps(report.to_dict()))
    assert RunReport.from_dict(data) == report
    with pytest.raises(ValueError):
        CheckResult("x", "f", "c", "maybe", 0.0)


def test_failed_means_failed_or_error_only() -> None:
    def run(*outcomes: str) -> RunReport:
        return RunReport("t", {}, "now", 0.0, [CheckResult(str(i), "f", "c", o, 0.0) for i, o in enumerate(outcomes)])

    assert not run("passed", "skipped", "not_supported").failed()
    assert run("passed", "error").failed()
    assert run("failed").failed()


def test_junit(tmp_path: Path) -> None:
    path = write_junit(_report(), tmp_path / "junit.xml")
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == ("6", "1", "1", "2")
    suites = {suite.get("name"): suite for suite in root.findall("testsuite")}
    assert list(suites) == list(FEATURES)
    assert (suites["streaming"].get("tests"), suites["streaming"].get("failures")) == ("2", "0")
    assert suites["logprobs"].get("skipped") == "1"
    case = root.find(".//testcase[@name='usage.totals_add_up']")
    assert case is not None and case.get("classname") == "usage" and case.get("time") == "0.200"
    failure = case.find("failure")
    assert failure is not None and failure.get("message") == "[must] 2 + 3 != 6" and failure.get("type") == "must"
    assert EVIL in (failure.text or "") and "curl -sS" in (failure.text or "") and "HTTP 200" in (failure.text or "")
    error = root.find(".//testcase[@name='seed.repeat_nonstream']/error")
    assert error is not None and "KeyError" in error.get("message", "")
    not_supported = root.find(".//testcase[@name='logprobs.shape']/skipped")
    assert not_supported is not None and not_supported.get("message") == "not supported: declared"
    skipped = root.find(".//testcase[@name='auth.missing_key']/skipped")
    assert skipped is not None and skipped.get("message") == "no API key given"
    passed = root.find(".//testcase[@name='streaming.done_once_last']")
    assert passed is not None and [child.tag for child in passed] == ["properties"]  # the severity only


def test_json(tmp_path: Path) -> None:
    data = json.loads(write_json(_report(), tmp_path / "conformance.json").read_text(encoding="utf-8"))
    assert {"title", "target", "started_at", "duration_s", "summary", "notes", "checks"} <= set(data)
    assert data["target"]["model"] == "m" and data["verdict"] == "failed"
    assert data["summary"] == {"passed": 2, "failed": 1, "error": 1, "skipped": 1, "not_supported": 1}
    passed_ids = [c["id"] for c in data["checks"] if c["outcome"] == "passed"]
    assert "logprobs.shape" not in passed_ids and data["summary"]["passed"] == len(passed_ids)
    assert data["notes"] == [{"param": "n", "doc-says": "1 < x < 128", "decision": "n >= 1 <inclusive>"}]
    by_id = {c["id"]: c for c in data["checks"]}
    assert len(by_id) == 6
    for check in data["checks"]:
        assert {"id", "feature", "category", "outcome", "duration_s", "message"} <= set(check)
    failed = by_id["usage.totals_add_up"]
    assert failed["request"]["messages"][0]["content"] == EVIL
    assert failed["curl"].startswith("curl") and failed["response_excerpt"].startswith("HTTP 200")
    assert by_id["logprobs.shape"]["outcome"] == "not_supported"
    assert "curl" not in by_id["streaming.done_once_last"] and "request" not in by_id["logprobs.shape"]


def test_html(tmp_path: Path) -> None:
    html = write_html(_report(), tmp_path / "conformance.html").read_text(encoding="utf-8")
    assert 'id="verdict">FAIL<' in html
    # self-contained: nothing to fetch, and no script of ours or from the data
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html, re.I)
    assert not re.search(r"<link\b|@import|url\(", html, re.I)
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(" in html
    assert "&lt;inclusive&gt;" in html and "&lt;b&gt;&amp;" in html
    parser = _Tables()
    parser.feed(html)
    assert parser.scripts == 0
    features = parser.tables["features"]
    assert features[0] == ["feature", "passed", "failed", "error", "not supported", "skipped"]
    header = features[0]
    rows = {row[0]: dict(zip(header[1:], row[1:], strict=True)) for row in features[1:]}
    assert list(rows) == [*FEATURES, "total"]
    assert rows["streaming"]["passed"] == "2" and rows["usage"]["failed"] == "1"
    assert rows["logprobs"]["not supported"] == "1" and rows["logprobs"]["passed"] == "0"
    assert rows["total"]["passed"] == "2"
    checks = parser.tables["checks"]
    assert len(checks) == 1 + 6
    # order of sections, and the two failures expand
    positions = [html.index(s) for s in ('id="features"', "Spec decisions", "Failures (2)", "All checks (6)")]
    assert positions == sorted(positions)
    assert html.count("<details>") == 2


def test_html_chart_is_inline_and_optional(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    html = write_html(_report(), tmp_path / "with.html").read_text(encoding="utf-8")
    assert 'src="data:image/png;base64,' in html
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # importing it now raises ImportError
    html = write_html(_report(), tmp_path / "without.html").read_text(encoding="utf-8")
    assert "<img" not in html and 'id="verdict">FAIL<' in html


def test_write_all_and_passing_run(tmp_path: Path) -> None:
    report = RunReport("t", {}, "now", 0.1, [CheckResult("a", "f", "c", "passed", 0.1)])
    paths = write_all(report, tmp_path / "new" / "dir")
    assert {k: p.name for k, p in paths.items()} == {"junit": "junit.xml", "json": "conformance.json",
                                                       "html": "conformance.html", "summary": "summary.md"}
    assert all(p.parent == tmp_path / "new" / "dir" for p in paths.values())
    assert 'id="verdict">PASS<' in paths["html"].read_text(encoding="utf-8")
    assert json.loads(paths["json"].read_text(encoding="utf-8"))["verdict"] == "passed"
    assert ET.parse(paths["junit"]).getroot().get("failures") == "0"


def test_hostile_text_still_gives_valid_files(tmp_path: Path) -> None:
    """Control characters and lone surrogates from a broken response must not break any writer."""
    nasty = "esc\x1b nul\x00 surrogate\udcff ffff\uffff ok é"
    report = RunReport("t\x01", {"model": nasty}, "now", 0.1, [
        CheckResult("id\x02", "feat\x03 $x", "c", "failed", 0.1, message=nasty, response_excerpt=nasty,
                    request={"content": nasty}, curl=nasty),
    ])
    paths = write_all(report, tmp_path)
    root = ET.parse(paths["junit"]).getroot()
    text = root.find(".//failure").text or ""
    assert "\\x1b" in text and "\\x00" in text and "\\udcff" in text and "ok é" in text
    data = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert data["checks"][0]["message"] == nasty
    assert "ok é" in paths["html"].read_text(encoding="utf-8")


@pytest.mark.browser
def test_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed")
    html = write_all(_report(), tmp_path / "out")["html"]
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="verdict">FAIL<' in dom.stdout
    for feature in FEATURES:
        assert f"<th>{feature}</th>" in dom.stdout
    assert "usage.totals_add_up" in dom.stdout and "<script>alert" not in dom.stdout
    shot = tmp_path / "report.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1200,1600", html.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000  # something was painted


def _should_only() -> RunReport:
    """A run whose only failure is should-level (422 where 400 is recommended)."""
    return RunReport("t", {}, "now", 0.1, [
        CheckResult("ranges.temperature.above_max", "ranges", "outside", "passed", 0.1),
        CheckResult("errors.status_400", "errors", "status", "failed", 0.1, message="got 422", severity="should"),
    ])


def test_severity_decides_the_verdict_and_every_report_shows_it(tmp_path: Path) -> None:
    report = _should_only()
    assert not report.failed() and report.verdict() == "PASSED"
    assert [r.id for r in report.tolerated()] == ["errors.status_400"]
    assert report.by_severity()["should"]["failed"] == 1 and report.by_severity()["must"]["passed"] == 1
    paths = write_all(report, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["verdict"] == "passed" and data["fail_on"] == "must"
    assert {c["id"]: c["severity"] for c in data["checks"]} == {
        "ranges.temperature.above_max": "must", "errors.status_400": "should"}
    assert data["by_severity"]["should"]["failed"] == 1
    root = ET.parse(paths["junit"]).getroot()
    assert root.find("./properties/property[@name='fail_on']").get("value") == "must"
    failure = root.find(".//testcase[@name='errors.status_400']/failure")
    assert failure.get("type") == "should" and failure.get("message") == "[should] got 422"
    case = root.find(".//testcase[@name='ranges.temperature.above_max']")
    assert case.find("./properties/property[@name='severity']").get("value") == "must"
    html = paths["html"].read_text()
    assert 'id="verdict">PASS<' in html
    assert "1 should-level check(s) failed without failing it: errors.status_400" in html
    parser = _Tables()
    parser.feed(html)
    assert parser.tables["severities"][2][:3] == ["should", "0", "1"]
    assert [row[3] for row in parser.tables["checks"][1:]] == ["must", "should"]


def test_failing_on_should_fails_the_run_and_round_trips() -> None:
    report = _should_only()
    report.fail_on = "should"
    assert report.failed() and report.verdict() == "FAILED" and not report.tolerated()
    assert RunReport.from_dict(report.to_dict()) == report
    with pytest.raises(ValueError, match="unknown severity"):
        CheckResult("x", "f", "c", "passed", 0.0, severity="may")
