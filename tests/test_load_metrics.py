"""Unit tests of the load package's pure parts: token timing from SSE bytes, metrics and their
formulas, SLOs, arrivals, prompts, datasets, client-health warnings and the load reports."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest

from load.arrivals import intended_offsets_s
from load.config import StepSpec, share
from load.health import client_warnings, data_warnings
from load.lengths import fixed_length
from load.metrics import Window, meets_slo, step_metrics, summarize_ms
from load.prompts import DISTINCT_WORDS, DatasetError, PromptPlan, calibrate_prompt, load_dataset
from load.records import RequestRecord, StreamTimer, read_json_body
from load.slo import judge, parse_slo
from load.summary import build_document, calibration_errors
from load.workloads import from_wire as workload_from_wire
from load.workloads import request_body
from load.workloads.dataset import DatasetWorkload
from load.workloads.synthetic import SyntheticWorkload
from load.workloads.tools import ToolsWorkload
from reports.load_report import render_load_html, write_load_reports

MS = 1_000_000


def chunk(content: str | None = None, usage: dict | None = None, role: bool = False) -> bytes:
    choices = [] if usage else [{"index": 0, "delta": {**({"role": "assistant"} if role else {}),
                                                       **({"content": content} if content is not None else {})},
                                 "finish_reason": None}]
    body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": choices}
    if usage:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def record(send: float, tokens: list[float], *, usage: int | None = None, ok: bool = True, intended=None):
    """A finished streamed record; times in ms."""
    r = RequestRecord(send_ns=int(send * MS), stream=True, intended_ns=None if intended is None else int(intended * MS))
    r.token_ns = [int(t * MS) for t in tokens]
    r.first_token_ns = r.first_content_ns = r.token_ns[0] if tokens else None
    r.chunk_tokens = r.content_events = len(tokens)
    r.usage_completion = len(tokens) if usage is None else usage
    r.end_ns = int((tokens[-1] if tokens else send) * MS) + MS
    r.status = 200 if ok else 500
    r.error = None if ok else "HTTP 500"
    return r


class TestStreamTimer:
    def test_stamps_each_content_event_when_its_bytes_arrive_however_split(self):
        body = (chunk("", role=True) + chunk("Hel") + chunk("lo") + chunk(None)
                + chunk(usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}) + b"data: [DONE]\n\n")
        rec = RequestRecord(send_ns=0, stream=True)
        timer = StreamTimer(rec)
        for i in range(0, len(body), 7):  # 7-byte pieces: events complete in the middle of pieces
            timer.feed(body[i:i + 7], i)
        timer.close(len(body))
        assert rec.chunk_tokens == 2 and rec.usage_completion == 2 and rec.usage_prompt == 5
        assert rec.error is None and rec.ok is False  # status not set yet: not ok
        assert len(rec.token_ns) == 2 and rec.token_ns[0] < rec.token_ns[1]
        # each stamp is the time of the piece that completed that event's blank line
        hel_end = body.index(chunk("Hel")) + len(chunk("Hel"))
        assert rec.token_ns[0] == (hel_end - 1) // 7 * 7
        assert rec.first_token_ns == rec.token_ns[0] and rec.end_ns == len(body)

    def test_a_stream_without_done_is_an_error(self):
        rec = RequestRecord(send_ns=0, stream=True)
        timer = StreamTimer(rec)
        timer.feed(chunk("a"), 1)
        timer.close(2)
        assert rec.error == "stream ended without data: [DONE]"

    def test_data_after_done_and_non_json_events_are_errors(self):
        rec = RequestRecord(send_ns=0, stream=True)
        timer = StreamTimer(rec)
        timer.feed(b"data: [DONE]\n\n" + chunk("late"), 1)
        assert rec.error == "data after [DONE]"
        rec2 = RequestRecord(send_ns=0, stream=True)
        StreamTimer(rec2).feed(b"data: {oops\n\n", 1)
        assert rec2.error.startswith("event is not JSON")

    def test_usage_mismatch_is_flagged(self):
        rec = record(0, [10, 20, 30], usage=5)
        assert rec.token_count_mismatch and rec.output_tokens == 5

    def test_non_stream_body_and_error_envelope(self):
        rec = RequestRecord(send_ns=0, stream=False, status=200)
        read_json_body(rec, json.dumps({"usage": {"prompt_tokens": 3, "completion_tokens": 9}}).encode(), 50)
        assert rec.ok and rec.output_tokens == 9 and rec.end_ns == 50
        bad = RequestRecord(send_ns=0, stream=False, status=429)
        read_json_body(bad, b'{"error": {"message": "busy", "type": "rate_limit"}}', 5)
        assert not bad.ok and "HTTP 429" in bad.error and "busy" in bad.error

    def test_records_survive_the_wire(self):
        rec = record(1, [5, 6], intended=0.5)
        assert RequestRecord.from_wire(json.loads(json.dumps(rec.to_wire()))) == rec


class TestMetrics:
    def test_percentiles_are_exact_not_bucketed(self):
        samples = np.arange(1, 1001) * 1000  # 1..1000 us
        summary = summarize_ms(samples)
        assert summary["count"] == 1000
        assert summary["p50"] == pytest.approx(np.percentile(samples / 1e6, 50))
        assert summary["p99_9"] == pytest.approx(np.percentile(samples / 1e6, 99.9))
        assert summary["min"] == 0.001 and summary["max"] == 1.0

    def test_formulas(self):
        # TTFT 100; tokens at 100, 110, 130 (ITL 10, 20); E2E ends 1 ms after the last token
        r = record(0, [100, 110, 130])
        m = step_metrics([r], Window(0, 1000 * MS))
        assert m["ttft_ms"]["p50"] == pytest.approx(100)
        assert sorted([m["itl_ms"]["min"], m["itl_ms"]["max"]]) == [pytest.approx(10), pytest.approx(20)]
        assert m["e2e_ms"]["p50"] == pytest.approx(131)
        assert m["tpot_ms"]["p50"] == pytest.approx((131 - 100) / 2)  # (E2E - TTFT) / (out - 1)
        assert m["requests_per_s"] == pytest.approx(1.0) and m["output_tokens_per_s"] == pytest.approx(3.0)

    def test_itl_pools_gaps_of_all_streams_but_never_across_streams(self):
        a, b = record(0, [10, 11, 12]), record(0, [50, 60])
        m = step_metrics([a, b], Window(0, 1000 * MS))
        assert m["itl_ms"]["count"] == 3
        assert m["itl_ms"]["max"] == pytest.approx(10)

    def test_warmup_and_failures_are_not_measured(self):
        warm = record(1, [5, 6])
        late = record(600, [700, 710])
        failed = record(650, [660], ok=False)
        m = step_metrics([warm, late, failed], Window(500 * MS, 1500 * MS))
        assert m["requests_sent"] == 2 and m["requests_ok"] == 1 and m["requests_failed"] == 1
        assert m["error_rate"] == pytest.approx(0.5) and m["errors"] == {"HTTP 500": 1}
        assert m["ttft_ms"]["count"] == 1 and m["ttft_ms"]["p50"] == pytest.approx(100)

    def test_goodput_counts_only_requests_meeting_every_objective(self):
        fast, slow = record(0, [50, 60, 70]), record(0, [300, 310, 320])
        slo = {"ttft_p99": 100.0}
        assert meets_slo(fast, slo) and not meets_slo(slow, slo)
        m = step_metrics([fast, slow], Window(0, 2000 * MS), slo)
        assert m["goodput_per_s"] == pytest.approx(0.5)
        assert not meets_slo(record(0, [10, 11, 60]), {"itl_p99": 20.0})

    def test_send_lag_from_intended_times(self):
        r = record(15, [100], intended=10)
        m = step_metrics([r], Window(0, 1000 * MS))
        assert m["send_lag_ms"]["p50"] == pytest.approx(5)


class TestSlo:
    def test_parse(self):
        assert parse_slo("ttft_p99=500, itl_p50=20,e2e_p99.9=4000") == {
            "ttft_p99": 500.0, "itl_p50": 20.0, "e2e_p99_9": 4000.0}

    @pytest.mark.parametrize("text", ["ttft=5", "latency_p99=5", "ttft_p99=abc", "ttft_p99=-1", "ttft_p100=5",
                                      "ttft_p99"])
    def test_bad_objectives_name_themselves(self, text):
        with pytest.raises(ValueError, match="bad SLO"):
            parse_slo(text)

    def test_judge_uses_the_named_percentile_even_outside_the_default_set(self):
        records = [record(0, [t]) for t in range(1, 101)]
        slo = {"ttft_p75": 80.0, "ttft_p50": 10.0}
        m = step_metrics(records, Window(0, 10_000 * MS), slo)
        verdicts = {v["objective"]: v for v in judge(m, slo)}
        assert verdicts["ttft_p75"]["met"] and verdicts["ttft_p75"]["measured_ms"] == pytest.approx(75.25)
        assert not verdicts["ttft_p50"]["met"]
        assert not judge(step_metrics([], Window(0, 1), slo), slo)[0]["met"]  # no samples: missed


class TestArrivalsAndShares:
    @pytest.mark.parametrize("arrival", ["poisson", "constant", "gamma"])
    def test_mean_rate(self, arrival):
        offsets = list(intended_offsets_s(50.0, arrival, seed=1, limit=20_000))
        assert offsets[0] == 0 and all(b >= a for a, b in zip(offsets, offsets[1:], strict=False))
        assert len(offsets) / offsets[-1] == pytest.approx(50.0, rel=0.05)

    def test_shapes_differ(self):
        def cv(arrival: str) -> float:
            gaps = np.diff(list(intended_offsets_s(10.0, arrival, seed=2, limit=5000)))
            return float(gaps.std() / gaps.mean())

        assert cv("constant") < 1e-9 and cv("poisson") == pytest.approx(1.0, abs=0.1) and cv("gamma") > 1.2

    def test_bad_arguments(self):
        with pytest.raises(ValueError):
            next(intended_offsets_s(0, "poisson"))
        with pytest.raises(ValueError):
            next(intended_offsets_s(1, "weibull"))

    def test_share_splits_exactly(self):
        assert [share(31, 4, i) for i in range(4)] == [8, 8, 8, 7] and sum(share(5, 7, i) for i in range(7)) == 5


class TestPrompts:
    def test_calibration_hits_the_target_with_template_overhead(self):
        def count(words: int) -> int:  # 17 tokens of chat template, 1.4 tokens per word
            return 17 + round(1.4 * words)

        plan = calibrate_prompt(200, count)
        assert abs(count(plan.words) - 200) <= 1 and plan.prompt_tokens == count(plan.words)

    def test_a_target_below_the_shortest_distinct_prompt_gets_that_prompt(self):
        def count(words: int) -> int:  # a chat template of 30 tokens, as SmolLM2's
            return 30 + words

        plan = calibrate_prompt(32, count)
        assert plan.words == DISTINCT_WORDS and plan.prompt_tokens == 30 + DISTINCT_WORDS

    def test_short_prompts_never_repeat_in_a_run(self):
        """One word asked for: 51 possible prompts, so a run repeated them and a prompt cache
        answered the repeats; the floor of DISTINCT_WORDS words keeps 5,000 prompts distinct."""
        for workload in (SyntheticWorkload(fixed_length(2), words=1),
                         ToolsWorkload(fixed_length(2), words=1)):
            session = workload.session(random.Random(5))
            prompts = [session.next_request(None).messages[-1]["content"] for _ in range(5000)]
            assert len(set(prompts)) == len(prompts), type(workload).__name__

    def test_prompts_differ_but_have_the_planned_length(self):
        rng = random.Random(0)
        a, b = PromptPlan(20).messages(rng), PromptPlan(20).messages(rng)
        assert a != b and len(a[0]["content"].split()) == len(b[0]["content"].split()) == 23

    def test_bodies(self):
        synthetic = SyntheticWorkload(fixed_length(7), words=8)
        planned = synthetic.session(random.Random(1)).next_request(None)
        body = request_body(planned, model="m", stream=True, extra_body={"temperature": 0})
        assert body["max_tokens"] == 7 and body["stream_options"] == {"include_usage": True}
        assert body["temperature"] == 0 and body["model"] == "m"
        assert len(body["messages"][0]["content"].split()) == 3 + 8
        data = [{"messages": [{"role": "user", "content": "x"}], "max_tokens": 3},
                {"messages": [{"role": "user", "content": "y"}]}]
        session = DatasetWorkload(data, fixed_length(9)).session(random.Random(0))
        tokens = [session.next_request(None).max_tokens for _ in range(3)]
        assert tokens in ([3, 9, 3], [9, 3, 9])  # the file in order, from a per-user start

    def test_workloads_survive_the_wire(self):
        for workload in (SyntheticWorkload(fixed_length(7), words=3),
                         DatasetWorkload([{"messages": [{"role": "user", "content": "x"}]}], fixed_length(2), "f")):
            wire = json.loads(json.dumps(workload.to_wire()))
            assert workload_from_wire(wire) == workload

    def test_dataset_lines(self, tmp_path):
        good = tmp_path / "good.jsonl"
        good.write_text('[{"role": "user", "content": "a"}]\n\n{"messages": [{"role": "user", "content": "b"}], '
                        '"max_tokens": 4}\n')
        assert [e.get("max_tokens") for e in load_dataset(good)] == [None, 4]
        for text, where in (('[{"role": "user"}]\n', ":1:"), ('[]\n', ":1:"),
                            ('[{"role":"user","content":"a"}]\n{bad\n', ":2:"),
                            ('{"messages": [{"role":"user","content":"a"}], "max_tokens": 0}\n', ":1:"),
                            ("", "no requests")):
            bad = tmp_path / "bad.jsonl"
            bad.write_text(text)
            with pytest.raises(DatasetError, match=where):
                load_dataset(bad)


class TestHealth:
    def test_quiet_client_gets_no_warning(self):
        step = StepSpec(0, 4, 10, 1)
        assert client_warnings({"send_lag_ms": None}, [{"worker": 0, "cpu_fraction": 0.3, "loop_lag_ns": [100_000]}],
                               step) == []

    def test_token_count_mismatch_is_reported(self):
        metrics = step_metrics([record(0, [1, 2, 3], usage=6), record(0, [1, 2])], Window(0, 10 * MS))
        assert metrics["token_count_mismatches"] == 1
        assert data_warnings(metrics)[0].startswith("1 of 2 streams") and data_warnings({}) == []

    def test_busy_cpu_lagging_loop_and_late_sends_are_flagged(self):
        step = StepSpec(0, 4, 10, 1, rate=50.0)
        health = [{"worker": 0, "cpu_fraction": 0.97, "loop_lag_ns": [20 * MS] * 10}]
        warnings = client_warnings({"send_lag_ms": {"p99": 250.0}}, health, step)
        assert len(warnings) == 3 and all(w.startswith("client-limited") for w in warnings)
        assert "97%" in warnings[0] and "event loop" in warnings[1] and "scheduled" in warnings[2]
        assert "--workers 2" in warnings[0]

    def test_a_run_over_remote_workers_is_told_to_add_workers_there(self):
        step = StepSpec(0, 4, 10, 1)
        health = [{"worker": i, "cpu_fraction": 0.97, "loop_lag_ns": [100_000]} for i in range(2)]
        warnings = client_warnings({"send_lag_ms": None}, health, step, spread="--expect-workers")
        assert warnings and all("--expect-workers 3" in w and "--workers" not in w for w in warnings)

    def test_a_client_near_its_limit_is_told_how_many_workers_the_load_needs(self):
        step = StepSpec(0, 4, 10, 1)
        health = [{"worker": 0, "cpu_fraction": 0.8, "loop_lag_ns": [100_000]},
                  {"worker": 1, "cpu_fraction": 0.75, "loop_lag_ns": [100_000]}]
        warnings = client_warnings({"send_lag_ms": None, "token_events_per_s": 23_000.0}, health, step)
        assert len(warnings) == 1 and warnings[0].startswith("client near its limit")
        assert "80%, 75%" in warnings[0] and "23,000 token events/s" in warnings[0]
        assert "--workers 3" in warnings[0]  # 1.55 cores of work at most 70% a process

    def test_late_sends_blame_the_client_only_where_its_own_figures_show_it(self):
        step = StepSpec(0, 8, 10, 1, rate=50.0)
        quiet = [{"worker": 0, "cpu_fraction": 0.2, "loop_lag_ns": [100_000]}]
        late = {"send_lag_ms": {"p99": 40.0}}
        free = client_warnings(late, quiet, step, fidelity_with(late_claims=0))
        assert len(free) == 1 and not free[0].startswith("client-limited") and "free users" in free[0]
        busy = client_warnings(late, quiet, step, fidelity_with(late_claims=7))
        assert busy[0].startswith("client-limited") and "7 requests came due while all 8 users were busy" in busy[0]
        assert "raise --users" in busy[0]


def test_reports_are_written_and_self_contained(tmp_path):
    from load.document import Calibration
    from load.outcome import StepOutcome
    from load.summary import step_document

    records = [record(1500, [1600, 1610, 1625]), record(1700, [1790, 1800])]
    window = Window(1000 * MS, 10_000 * MS)
    metrics = step_metrics(records, window, {"ttft_p50": 50.0})
    outcome = StepOutcome(StepSpec(0, 2, 10, 1), records, [{"worker": 0, "cpu_fraction": 0.5, "loop_lag_ns": [1000]}],
                          window, metrics, judge(metrics, {"ttft_p50": 50.0}), warnings=["client-limited: test <b>"])
    steps = [step_document(outcome)]
    doc = build_document(target={"base_url": "http://x"}, settings={"stream": True}, steps=steps,
                         started_at="now", duration_s=3.0,
                         calibration=Calibration(ttft_ms=90, itl_ms=10, errors=calibration_errors(steps, 90, 10)))
    assert not doc.slo_met and doc.client_limited
    paths = write_load_reports(doc, tmp_path / "r")
    assert json.loads(paths["json"].read_text())["steps"][0]["metrics"]["requests_ok"] == 2
    rows = list(csv.DictReader(paths["csv"].open()))
    assert rows[0]["label"] == "2 users" and float(rows[0]["ttft_p50_ms"]) == pytest.approx(95.0)
    html = paths["html"].read_text()
    assert "SLO MISSED" in html and "MISSED" in html and "data:image/png;base64," in html
    assert "<script" not in html and "src=\"http" not in html and "&lt;b&gt;" in html
    assert "TPOT = (E2E - TTFT) / (output tokens - 1)" in render_load_html(doc)


def fidelity_with(late_claims: int):
    """A step verdict whose only interesting figure is how many slots were taken late."""
    from load.fidelity import DURATION, ProcessCounts, judge_step

    counts = [ProcessCounts(scheduled=10, sent=10, done=10, late_claims=late_claims)]
    records = [RequestRecord(send_ns=i * MS, stream=True, end_ns=i * MS + 1, status=200) for i in range(10)]
    return judge_step(asked=None, asked_rate=50.0, users=8, counts=counts, records=records, end=DURATION,
                      end_detail="", window_start_ns=0, window_end_ns=10 * MS)
