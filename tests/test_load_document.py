"""The load report as typed records (load.document): it reads back what it writes, and reports
written before it existed (tests/data/load_runs, made by the dict-based code from three real mock
runs) still load, write the same load.json, CSV, summary and HTML, and compare as they did."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest

from load.cli import print_summary
from load.compare import compare_runs, load_run
from load.config import StepSpec
from load.document import LoadReport, StepRecord
from load.metrics import Window, step_metrics
from load.outcome import StepOutcome
from load.records import RequestRecord
from load.slo import judge
from load.summary import build_document, step_document
from reports.load_report import render_load_html, write_load_reports

RUNS = Path(__file__).parent / "data" / "load_runs"
NAMES = ("sweep", "capacity", "calibrate")
MS = 1_000_000


def answered(send_ms: float, tokens_ms: list[float]) -> RequestRecord:
    r = RequestRecord(send_ns=int(send_ms * MS), stream=True, status=200, max_tokens=8, requested_prompt_tokens=20)
    for t in tokens_ms:
        r.token_ns.append(int(t * MS))
    r.first_token_ns = r.first_content_ns = r.token_ns[0]
    r.end_ns = r.token_ns[-1] + MS
    r.usage_prompt, r.usage_completion = 21, len(tokens_ms)
    return r


def made_step() -> StepRecord:
    records = [answered(100 + 50 * i, [180 + 50 * i + 10 * k for k in range(5)]) for i in range(8)]
    window = Window(0, 1000 * MS)
    slo = {"ttft_p99": 50.0, "error_rate": 0.1}
    metrics = step_metrics(records, window, slo)
    outcome = StepOutcome(StepSpec(0, 4, 1.0, 0.0), records,
                          [{"worker": 0, "cpu_fraction": 0.2, "loop_lag_ns": [1000, 3000]}], window, metrics,
                          judge(metrics, slo), warnings=["a warning"])
    return step_document(outcome)


def test_a_step_and_a_report_read_back_what_they_write():
    step = made_step()
    assert StepRecord.from_json(json.loads(json.dumps(step.to_json()))) == step
    assert not step.slo_met and step.metrics.ttft_ms.count == 8 and step.slo[1].unit == "fraction"
    doc = build_document(target={"model": "m"}, settings={}, steps=[step], started_at="now", duration_s=1.0)
    assert LoadReport.from_json(json.loads(json.dumps(doc.to_json()))) == doc


@pytest.mark.parametrize("name", NAMES)
def test_a_saved_report_reads_back_to_the_same_document(name):
    data = json.loads((RUNS / name / "load.json").read_text())
    doc = LoadReport.from_json(data)
    assert doc.to_json() == data and list(doc.to_json()) == list(data)
    assert LoadReport.from_json(doc.to_json()) == doc


@pytest.mark.parametrize("name", NAMES)
def test_a_saved_report_writes_the_same_files_summary_and_page(name, tmp_path):
    doc = LoadReport.read(RUNS / name / "load.json")
    paths = write_load_reports(doc, tmp_path)
    assert paths["json"].read_text() == (RUNS / name / "load.json").read_text()
    assert paths["csv"].read_text() == (RUNS / name / "load.csv").read_text()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_summary(doc)
    assert out.getvalue() == (RUNS / name / "summary.txt").read_text()
    html = re.sub(r'src="data:image/png;base64,[^"]*"', 'src="PNG"', render_load_html(doc))
    assert html == (RUNS / name / "load.html").read_text()


def test_saved_runs_compare_as_they_did(monkeypatch):
    monkeypatch.chdir(RUNS)  # the saved comparison names its runs by these relative folders
    expected = json.loads((RUNS / "compare.json").read_text())
    for pair, result in expected.items():
        first, second = pair.split("-")
        assert compare_runs([load_run(first), load_run(second)], resamples=50, seed=1) == result


def test_a_report_from_before_the_newer_keys_still_loads_and_compares(tmp_path):
    """Older reports lack fidelity, workload, timeline, TTFC, error kinds and verdict units."""
    for name in ("sweep", "capacity"):
        data = json.loads((RUNS / name / "load.json").read_text())
        for step in data["steps"]:
            for key in ("fidelity", "workload", "timeline", "stopped_early"):
                step.pop(key)
            for key in ("ttfc_ms", "errors_by_kind", "error_examples", "requests_with_reasoning",
                        "reasoning_tokens_mean", "requests_total", "requests_refused"):
                step["metrics"].pop(key)
            for verdict in (v for v in step["slo"] if "limit_ms" in v):  # latencies: only in ms then
                for key in ("limit", "measured", "unit"):
                    verdict.pop(key)
        (tmp_path / name).mkdir()
        (tmp_path / name / "load.json").write_text(json.dumps(data))
        shutil.copy(RUNS / name / "requests.jsonl", tmp_path / name)
    old = LoadReport.read(tmp_path / "sweep" / "load.json")
    assert old.steps[0].fidelity is None and old.steps[0].metrics.ttfc_ms is None and old.fidelity_ok
    assert old.steps[0].slo[0].limit == 500.0 and old.steps[0].slo[0].unit == "ms"
    html = render_load_html(old)
    assert 'id="verdict">OK<' in html and "<td>ms</td>" in html and 'id="fidelity"' in html
    result = compare_runs([load_run(str(tmp_path / "sweep")), load_run(str(tmp_path / "capacity"))], resamples=20)
    assert {row["step"] for row in result["rows"]} == {"2 users", "4 users"}
