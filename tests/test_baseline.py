"""Baselines: expected failures (each with a reason) do not fail the run, a new failure does,
expected ones that pass are listed as fixed, and every report marks failures new or expected."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from plugin_env import plugin_env

from conformance import baseline
from reference_server.launcher import RunningServer, running_server
from reports import CheckResult, RunReport, write_all

# The reference server holds the documented bounds: OpenAI's profile fails these two (must-level).
FAILING = {"ranges.temperature.inclusive_min_end", "ranges.temperature.inclusive_max_end"}
SELECT = ["--profile", "openai", "-k", "ranges.temperature"]


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    with running_server("--ttft-ms", "0", "--itl-ms", "0", engine="mock") as server:
        yield server


def _check(mock: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conformance", "--base-url", mock.base_url, "--api-key",
                           mock.api_key or "", "--quiet", *SELECT, *args], capture_output=True, text=True, timeout=300)


def _report(*outcomes: tuple[str, str]) -> RunReport:
    return RunReport(title="t", target={}, started_at="now", duration_s=0.1, results=[
        CheckResult(id=check_id, feature="f", category="c", outcome=outcome, duration_s=0.0, message=f"{check_id}!")
        for check_id, outcome in outcomes])


def test_yaml_baseline_needs_a_reason_for_each_entry(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text("expected_failures:\n  - id: a.b\n    reason: known\n")
    assert baseline.load(path).expected == {"a.b": "known"}
    path.write_text("expected_failures:\n  - id: a.b\n")
    with pytest.raises(baseline.BaselineError, match="a.b has no 'reason'"):
        baseline.load(path)
    path.write_text("- a.b\n")
    with pytest.raises(baseline.BaselineError, match="expected_failures"):
        baseline.load(path)


def test_apply_marks_new_expected_and_fixed() -> None:
    report = _report(("a", "failed"), ("b", "error"), ("c", "passed"), ("d", "passed"))
    assert report.failed()
    baseline.apply(report, baseline.Baseline("b.yaml", {"a": "why a", "c": "why c"}))
    assert [r.baseline for r in report.results] == ["expected", "new", None, None]
    assert report.results[0].baseline_reason == "why a"
    assert report.fixed == ["c"]
    assert report.failed() and [r.id for r in report.new_failures()] == ["b"]
    baseline.apply(report, baseline.Baseline("b.yaml", {"a": "x", "b": "y"}))
    assert not report.failed() and report.verdict() == "PASSED"


def test_reports_mark_each_failure_new_or_expected(tmp_path: Path) -> None:
    report = _report(("a", "failed"), ("b", "failed"), ("c", "passed"))
    baseline.apply(report, baseline.Baseline("b.yaml", {"a": "gateway rewrites 400 to 422", "c": "old"}))
    write_all(report, tmp_path)
    data = json.loads((tmp_path / "conformance.json").read_text())
    marks = {c["id"]: c.get("baseline") for c in data["checks"]}
    assert marks == {"a": "expected", "b": "new", "c": None}
    assert data["baseline"] == {"file": "b.yaml", "expected": ["a"], "new": ["b"], "fixed": ["c"]}
    cases = {case.get("name"): case for case in ET.parse(tmp_path / "junit.xml").iter("testcase")}
    prop = {name: {p.get("name"): p.get("value") for p in case.iter("property")} for name, case in cases.items()}
    assert prop["a"]["baseline"] == "expected" and prop["b"]["baseline"] == "new" and "baseline" not in prop["c"]
    assert "gateway rewrites 400 to 422" in cases["a"].find("failure").get("message")
    html = (tmp_path / "conformance.html").read_text()
    assert "[expected]" in html and "[new]" in html and "Fixed (expected to fail, now pass): c" in html


def test_update_then_gate_exits_0_and_a_new_failure_exits_1(mock: RunningServer, tmp_path: Path) -> None:
    path = tmp_path / "baseline.yaml"
    first = _check(mock, "--baseline", str(path), "--update-baseline")
    assert first.returncode == 0, first.stdout + first.stderr
    written = yaml.safe_load(path.read_text())["expected_failures"]
    assert {item["id"] for item in written} == FAILING and all(item["reason"] for item in written)

    again = _check(mock, "--baseline", str(path), "--report-dir", str(tmp_path / "r"))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 expected, 0 new failure(s)" in again.stdout
    checks = json.loads((tmp_path / "r" / "conformance.json").read_text())["checks"]
    assert {c["id"] for c in checks if c.get("baseline") == "expected"} == FAILING

    # One failure left out, and a passing check listed: exit 1 (new), and the passing one is fixed.
    path.write_text(yaml.safe_dump({"expected_failures": [
        {"id": "ranges.temperature.inclusive_min_end", "reason": "documented bounds"},
        {"id": "ranges.temperature.above_max", "reason": "was broken once"}]}))
    new = _check(mock, "--baseline", str(path))
    assert new.returncode == 1, new.stdout + new.stderr
    assert "1 expected, 1 new failure(s), fixed: ranges.temperature.above_max" in new.stdout


def test_a_previous_conformance_json_is_a_baseline(mock: RunningServer, tmp_path: Path) -> None:
    before = _check(mock, "--report-dir", str(tmp_path))
    assert before.returncode == 1
    after = _check(mock, "--baseline", str(tmp_path / "conformance.json"))
    assert after.returncode == 0, after.stdout + after.stderr
    bad = _check(mock, "--baseline", str(tmp_path / "missing.yaml"))
    assert bad.returncode == 2 and "cannot read the baseline" in bad.stderr


def test_pytest_plugin_xfails_expected_failures(mock: RunningServer, tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump({"expected_failures": [
        {"id": check_id, "reason": "documented bounds"} for check_id in [*FAILING, "ranges.temperature.above_max"]]}))
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--chatspec-base-url", mock.base_url,
               "--chatspec-api-key", mock.api_key or "", "--chatspec-profile", "openai", "-k", "temperature",
               "-q", "-rx"]
    env = plugin_env(tmp_path)
    gated = subprocess.run([*command, "--chatspec-baseline", str(path)], capture_output=True, text=True,
                           timeout=300, cwd=tmp_path, env=env)
    plain = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert gated.returncode == 0, gated.stdout + gated.stderr
    assert "2 xfailed" in gated.stdout and "expected by the baseline (documented bounds)" in gated.stdout
    assert "fixed since the baseline (expected to fail, now pass): ranges.temperature.above_max" in gated.stdout
    assert plain.returncode == 1 and "2 failed" in plain.stdout
