"""Reasoning models timed right by the load tool: TTFT at the first token of any kind (reasoning
included), TTFC at the first content token, reasoning tokens counted apart, and every report
saying so. Unit tests on hand-made streams, then `python -m load` against the mock engine
emitting reasoning first (a subprocess: Locust monkey-patches the interpreter)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from load.config import StepSpec
from load.document import LoadReport, StepMetrics
from load.export import read_requests, write_requests
from load.metrics import FORMULAS, Window, step_metrics
from load.outcome import StepOutcome
from load.reasoning import summary_line
from load.records import RequestRecord, StreamTimer, read_json_body
from load.summary import build_document, step_document
from reports.load_report import render_load_html, write_load_reports

ROOT = Path(__file__).resolve().parent.parent
MS = 1_000_000


def event(delta: dict[str, Any] | None = None, usage: dict[str, Any] | None = None) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": None}]
    body: dict[str, Any] = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                            "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def timed(*events: bytes) -> RequestRecord:
    """A finished 200 stream whose i-th event arrived at 100 + 10 i ms after a send at 0."""
    record = RequestRecord(send_ns=0, stream=True, status=200)
    timer = StreamTimer(record)
    for i, data in enumerate(events):
        timer.feed(data, (100 + 10 * i) * MS)
    timer.feed(b"data: [DONE]\n\n", (100 + 10 * len(events)) * MS)
    timer.close((101 + 10 * len(events)) * MS)
    return record


def usage(completion: int, reasoning: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt_tokens": 4, "completion_tokens": completion, "total_tokens": 4 + completion}
    if reasoning is not None:
        body["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return body


ROLE = event({"role": "assistant", "content": ""})


class TestStreamTimer:
    @pytest.mark.parametrize("key", ["reasoning_content", "reasoning"])
    def test_first_token_is_the_first_reasoning_token_and_content_comes_later(self, key):
        record = timed(ROLE, event({key: "Hmm"}), event({key: " so"}), event({"content": "Yes"}),
                       event({"content": "."}), event(usage=usage(4, 2)))
        assert record.first_token_ns == 110 * MS  # the role-only event at 100 is no token
        assert record.first_content_ns == 130 * MS
        assert record.token_ns == [110 * MS, 120 * MS, 130 * MS, 140 * MS]
        assert (record.chunk_tokens, record.content_events, record.reasoning_events) == (4, 2, 2)
        assert record.usage_reasoning == 2 and record.reasoning_tokens == 2
        assert not record.token_count_mismatch and record.ok

    def test_without_usage_details_the_reasoning_events_are_counted(self):
        record = timed(ROLE, event({"reasoning": "a"}), event({"reasoning": "b"}), event({"reasoning": "c"}),
                       event({"content": "d"}), event(usage=usage(4)))
        assert record.usage_reasoning is None and record.reasoning_tokens == 3

    def test_usage_details_win_over_our_count(self):
        record = timed(event({"reasoning_content": "a"}), event({"content": "b"}), event(usage=usage(9, 8)))
        assert record.reasoning_events == 1 and record.reasoning_tokens == 8

    def test_nulls_and_empty_strings_are_no_tokens(self):
        record = timed(event({"content": None, "reasoning_content": "x"}), event({"content": "", "reasoning": None}),
                       event({"content": "y", "reasoning_content": None}), event(usage=usage(2)))
        assert record.token_ns == [100 * MS, 120 * MS] and record.first_content_ns == 120 * MS
        assert (record.reasoning_events, record.content_events) == (1, 1)

    def test_tool_calls_are_token_events_of_their_own(self):
        call = {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}
        record = timed(event(call), event(call), event(usage=usage(2)))
        assert record.first_token_ns == 100 * MS and record.first_content_ns is None
        assert (record.chunk_tokens, record.tool_call_events, record.content_events) == (2, 2, 0)

    def test_mismatch_compares_usage_with_every_token_event(self):
        reasons = (event({"reasoning_content": "a"}), event({"reasoning_content": "b"}), event({"content": "c"}))
        assert not timed(*reasons, event(usage=usage(3, 2))).token_count_mismatch
        assert timed(*reasons, event(usage=usage(1))).token_count_mismatch  # a usage that forgot the reasoning

    def test_the_answer_text_is_content_only(self):
        record = RequestRecord(send_ns=0, stream=True)
        timer = StreamTimer(record)
        timer.feed(event({"reasoning_content": "think"}) + event({"content": "answer"}), 1)
        assert timer.text == "answer"

    def test_non_streamed_usage_details(self):
        record = RequestRecord(send_ns=0, stream=False, status=200)
        body = {"id": "x", "choices": [{"message": {"role": "assistant", "content": "a", "reasoning_content": "b"}}],
                "usage": usage(7, 5)}
        assert read_json_body(record, json.dumps(body).encode(), 9) == "a"
        assert record.reasoning_tokens == 5 and record.output_tokens == 7 and record.first_content_ns is None

    def test_new_fields_survive_the_wire(self):
        record = timed(event({"reasoning_content": "a"}), event({"content": "b"}), event(usage=usage(2, 1)))
        wired = RequestRecord.from_wire(json.loads(json.dumps(record.to_wire())))
        assert wired == record and wired.first_content_ns == 110 * MS and wired.usage_reasoning == 1


def reasoning_record(send_ms: float, reasoning: int, content: int) -> RequestRecord:
    """A stream sent at send_ms: first token 40 ms later, then one every 10 ms, reasoning first;
    usage and [DONE] with the last token, the end 1 ms later."""
    events = [event({"reasoning_content": "r"})] * reasoning + [event({"content": "c"})] * content
    record = RequestRecord(send_ns=int(send_ms * MS), stream=True, status=200)
    timer = StreamTimer(record)
    for i, data in enumerate([*events, event(usage=usage(reasoning + content, reasoning)), b"data: [DONE]\n\n"]):
        timer.feed(data, int((send_ms + 40 + 10 * min(i, len(events) - 1)) * MS))
    timer.close(int((send_ms + 40 + 10 * (len(events) - 1) + 1) * MS))  # 1 ms after the last token
    return record


class TestMetrics:
    def test_ttft_ttfc_itl_and_reasoning_tokens(self):
        records = [reasoning_record(0, 5, 7), reasoning_record(100, 5, 7)]
        m = step_metrics(records, Window(0, 1000 * MS))
        assert m["ttft_ms"]["p50"] == pytest.approx(40) and m["ttfc_ms"]["p50"] == pytest.approx(90)
        assert m["itl_ms"]["count"] == 22 and m["itl_ms"]["max"] == pytest.approx(10)  # reasoning gaps too
        assert (m["requests_with_reasoning"], m["reasoning_tokens_total"], m["reasoning_tokens_mean"]) == (2, 10, 5)
        assert m["output_tokens_mean"] == 12 and m["token_count_mismatches"] == 0
        assert m["tpot_ms"]["p50"] == pytest.approx(10, abs=0.2)

    def test_a_model_that_answers_at_once_has_ttfc_equal_to_ttft_and_no_reasoning(self):
        m = step_metrics([reasoning_record(0, 0, 6)], Window(0, 1000 * MS))
        assert m["ttfc_ms"] == m["ttft_ms"] and m["requests_with_reasoning"] == 0
        assert m["reasoning_tokens_total"] == 0 and summary_line(StepMetrics.from_json(m)) is None

    def test_formulas_say_what_counts(self):
        assert "reasoning" in FORMULAS["ttft"] and "tool" in FORMULAS["ttft"]
        assert "delta.content" in FORMULAS["ttfc"] and "reasoning" in FORMULAS["itl"]
        assert "completion_tokens_details.reasoning_tokens" in FORMULAS["reasoning_tokens"]


def outcome(records: list[RequestRecord]) -> StepOutcome:
    """A finished step of these records, as the runner hands it to the summary and the export."""
    window = Window(0, 10_000 * MS)
    return StepOutcome(StepSpec(0, 2, 10, 1), records, [{"worker": 0, "cpu_fraction": 0.1, "loop_lag_ns": [1000]}],
                       window, metrics=step_metrics(records, window))


def document(records: list[RequestRecord]) -> LoadReport:
    return build_document(target={"base_url": "http://x"}, settings={"stream": True},
                          steps=[step_document(outcome(records))], started_at="now", duration_s=1.0)


def test_reports_show_ttfc_and_reasoning_only_where_there_is_some(tmp_path):
    thinking = document([reasoning_record(0, 5, 7), reasoning_record(100, 3, 2)])
    paths = write_load_reports(thinking, tmp_path)
    row = next(csv.DictReader(paths["csv"].open()))
    assert float(row["ttfc_p50_ms"]) == pytest.approx(80) and float(row["reasoning_tokens_mean"]) == 4.0
    html = paths["html"].read_text()
    assert 'id="reasoning"' in html and "TTFC" in html
    line = summary_line(thinking.steps[0].metrics)
    assert line is not None and "TTFC (first content) p50 80.0 ms" in line and "mean 4.0 (2 of 2 requests" in line
    plain = render_load_html(document([reasoning_record(0, 0, 5)]))
    assert 'id="reasoning"' not in plain


def test_requests_jsonl_has_first_content_and_reasoning(tmp_path):
    (line,) = read_requests(write_requests([outcome([reasoning_record(0, 5, 7)])], tmp_path))
    assert line["first_token_s"] == 0.04 and line["first_content_s"] == 0.09
    assert (line["token_events"], line["content_events"], line["reasoning_events"]) == (12, 7, 5)
    assert line["reasoning_tokens"] == 5 and line["completion_tokens"] == 12 and len(line["token_ms"]) == 12


# ---- end to end -----------------------------------------------------------------------------------


def run_load(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "load", "--quiet", *args], capture_output=True, text=True,
                          timeout=180, cwd=ROOT)


@pytest.fixture(scope="module")
def reasoning_server():
    from reference_server.launcher import running_server

    with running_server("--ttft-ms", "40", "--itl-ms", "10", "--mock-reasoning-tokens", "5", "--max-queue", "1000",
                        engine="mock") as server:
        yield server


def test_load_times_the_mock_reasoning_model_right(reasoning_server, tmp_path):
    """TTFT is the first reasoning token's 40 ms, not 40 + 5 x 10; TTFC the first content token's
    90 ms; every token 10 ms apart; 5 of each answer's 12 tokens are reasoning."""
    server = reasoning_server
    result = run_load("--base-url", server.base_url, f"--api-key={server.api_key}", "--model", server.model,
                      "--users", "2", "--duration", "3", "--warmup", "0.3", "--output-tokens", "12",
                      "--extra-body", '{"logit_bias": {"0": -100}}', "--report-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    m = json.loads((tmp_path / "load.json").read_text())["steps"][0]["metrics"]
    print(f"e2e: TTFT p50 {m['ttft_ms']['p50']:.2f} ms, TTFC p50 {m['ttfc_ms']['p50']:.2f} ms, "
          f"ITL p50 {m['itl_ms']['p50']:.2f} ms, requests {m['requests_ok']}")
    assert m["requests_ok"] >= 10 and m["requests_failed"] == 0
    assert 40.0 <= m["ttft_ms"]["p50"] < 70.0  # 40 + 5 x 10 = 90 if reasoning were not a token
    assert 35.0 <= m["ttfc_ms"]["p50"] - m["ttft_ms"]["p50"] <= 65.0  # the 5 reasoning tokens, 10 ms each
    assert m["ttfc_ms"]["count"] == m["ttft_ms"]["count"] == m["requests_ok"]
    assert m["itl_ms"]["p50"] == pytest.approx(10.0, abs=3.0) and m["itl_ms"]["count"] == 11 * m["requests_ok"]
    assert m["reasoning_tokens_mean"] == 5 and m["requests_with_reasoning"] == m["requests_ok"]
    assert m["output_tokens_mean"] == 12 and m["token_count_mismatches"] == 0
    assert "TTFC (first content) p50" in result.stdout
    lines = [line for line in read_requests(tmp_path / "requests.jsonl") if line["ok"]]
    assert all(line["reasoning_events"] == 5 and line["content_events"] == 7 for line in lines)
    assert 'id="reasoning"' in (tmp_path / "load.html").read_text()


def test_load_reads_non_streamed_reasoning_from_usage(reasoning_server, tmp_path):
    server = reasoning_server
    result = run_load("--base-url", server.base_url, f"--api-key={server.api_key}", "--model", server.model,
                      "--no-stream", "--users", "2", "--duration", "1.5", "--warmup", "0.2", "--output-tokens", "8",
                      "--extra-body", '{"logit_bias": {"0": -100}}', "--report-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    m = json.loads((tmp_path / "load.json").read_text())["steps"][0]["metrics"]
    assert m["requests_ok"] >= 4 and m["reasoning_tokens_mean"] == 5 and m["output_tokens_mean"] == 8
    assert m["ttfc_ms"]["count"] == 0  # nothing is timed inside a non-streamed answer
