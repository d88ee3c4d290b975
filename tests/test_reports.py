"""Report writers: JUnit counts, JSON structure, HTML that escapes data and reads in a browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from reports import CheckResult, RunReport, write_all

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _report() -> RunReport:
    evil = "<script>alert('x')</script>"
    return RunReport(
        title="chatspec conformance",
        target={"base_url": "http://127.0.0.1:1", "model": "m", "profile": "documented"},
        started_at="2026-11-25T00:00:00+00:00",
        duration_s=1.5,
        results=[
            CheckResult("streaming.done_once_last", "streaming", "framing", "passed", 0.1),
            CheckResult("usage.totals_add_up", "usage", "semantic", "failed", 0.2, message="2 + 3 != 6",
                        request={"messages": [{"role": "user", "content": evil}]},
                        response_excerpt="HTTP 200 application/json\n{}", curl="curl -sS http://127.0.0.1:1"),
            CheckResult("seed.repeat_nonstream", "seed", "semantic", "error", 0.3, message="boom"),
            CheckResult("auth.missing_key", "auth", "error", "skipped", 0.0, message="no API key given"),
            CheckResult("logprobs.shape", "logprobs", "semantic", "not_supported", 0.0, message="declared"),
        ],
        notes=[{"param": "n", "doc-says": "1 < x < 128", "decision": "n >= 1"}],
    )


def test_counts_and_round_trip() -> None:
    report = _report()
    assert report.counts() == {"passed": 1, "failed": 1, "error": 1, "skipped": 1, "not_supported": 1}
    assert report.failed()
    assert RunReport.from_dict(report.to_dict()) == report
    with pytest.raises(ValueError):
        CheckResult("x", "f", "c", "maybe", 0.0)


def test_writes_all_three(tmp_path: Path) -> None:
    paths = write_all(_report(), tmp_path / "out")
    root = ET.parse(paths["junit"]).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == ("5", "1", "1", "2")
    failure = root.find(".//testcase[@name='usage.totals_add_up']/failure")
    assert failure is not None and "curl -sS" in (failure.text or "")
    assert root.find(".//testcase[@name='logprobs.shape']/skipped").get("message").startswith("not supported")

    data = json.loads(paths["json"].read_text())
    assert data["verdict"] == "failed"
    assert data["summary"]["passed"] == 1 and data["summary"]["not_supported"] == 1
    by_id = {c["id"]: c for c in data["checks"]}
    assert by_id["usage.totals_add_up"]["curl"].startswith("curl")
    assert "curl" not in by_id["streaming.done_once_last"]
    assert data["notes"][0]["param"] == "n"

    html = paths["html"].read_text()
    assert "<script>" not in html  # the request's script text is escaped
    assert "&lt;script&gt;" in html
    assert not re.search(r"""(src|href)=["']?https?:""", html)
    for feature in ("streaming", "usage", "seed", "auth", "logprobs"):
        assert f"<th>{feature}</th>" in html
    assert 'id="verdict">FAIL<' in html


def test_passing_run_says_pass(tmp_path: Path) -> None:
    report = RunReport("t", {}, "now", 0.1, [CheckResult("a", "f", "c", "passed", 0.1)])
    html = write_all(report, tmp_path)["html"].read_text()
    assert 'id="verdict">PASS<' in html


@pytest.mark.browser
def test_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed")
    html = write_all(_report(), tmp_path)["html"]
    with tempfile.TemporaryDirectory() as profile:
        shot = tmp_path / "report.png"
        common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  f"--user-data-dir={profile}"]
        dom = subprocess.run(common + ["--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120)
        subprocess.run(common + [f"--screenshot={shot}", "--window-size=1200,1600", html.as_uri()],
                       capture_output=True, timeout=120)
    assert 'id="verdict">FAIL<' in dom.stdout
    assert "usage.totals_add_up" in dom.stdout and "<th>logprobs</th>" in dom.stdout
    assert shot.exists() and shot.stat().st_size > 10_000  # something was painted
