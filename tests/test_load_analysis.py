"""Unit tests of the load tool's analyses, without a server: the capacity search and its early
stop, the error_rate objective, the per-second timeline, requests.jsonl, scraped Prometheus series,
run comparison with bootstrap intervals, and what the report shows of them."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import numpy as np
import pytest

from load.capacity import CapacitySearch
from load.compare import compare_runs, load_run, regressions
from load.compare import main as compare_main
from load.config import StepSpec
from load.export import read_requests, write_requests
from load.metrics import Window, step_metrics
from load.outcome import StepOutcome
from load.records import RequestRecord
from load.scrape import Scrapes, pick
from load.slo import judge, parse_slo
from load.summary import build_document, step_document
from load.timeline import step_timeline
from reports.load_report import render_load_html

MS = 1_000_000


def record(send_ms: float, tokens_ms: list[float], *, ok: bool = True, worker: int = 0) -> RequestRecord:
    r = RequestRecord(send_ns=int(send_ms * MS), stream=True, worker=worker)
    r.token_ns = [int(t * MS) for t in tokens_ms]
    r.first_token_ns = r.token_ns[0] if tokens_ms else None
    r.chunk_tokens = r.usage_completion = len(tokens_ms)
    r.end_ns = int((tokens_ms[-1] if tokens_ms else send_ms) * MS) + MS
    r.status = 200 if ok else 500
    if not ok:
        r.fail("http_5xx", "HTTP 500")
    r.request_id = f"chatcmpl-{send_ms:g}"
    return r


def make_outcome(spec: StepSpec, slo: list[dict[str, Any]], *, records: list[RequestRecord] | None = None,
                 metrics: dict[str, Any] | None = None, window: Window | None = None, **kw: Any) -> StepOutcome:
    """A real StepOutcome, with the defaults these tests lean on (one quiet client process)."""
    return StepOutcome(spec, records or [], [{"worker": 0, "cpu_fraction": 0.1, "loop_lag_ns": [1000]}],
                       window or Window(0, 10**9), metrics or {}, slo, **kw)


def simulate(search: CapacitySearch, passes: Any) -> list[StepOutcome]:
    """Run a search against a fake endpoint where a level passes iff passes(level)."""
    outcomes: list[StepOutcome] = []
    while (step := search.next_step(outcomes)) is not None:
        outcomes.append(make_outcome(step, [{"objective": "ttft_p99", "limit": 100.0, "measured": 50.0 if passes(
            step.level) else 500.0, "met": passes(step.level)}]))
    return outcomes


TEMPLATE = StepSpec(index=0, users=1, duration_s=10, warmup_s=1)


class TestCapacitySearch:
    def test_closed_loop_ramps_then_bisects_to_the_exact_concurrency(self):
        search = CapacitySearch(template=TEMPLATE, slo={"ttft_p99": 100.0}, open_loop=False, start=1)
        outcomes = simulate(search, lambda level: level <= 5)
        assert [o.spec.level for o in outcomes] == [1, 2, 4, 8, 6, 5]
        result = search.result(outcomes)
        assert result["capacity"] == 5 and result["first_failing"] == 6 and result["capacity_label"] == "5 users"
        assert result["stop_reason"].startswith("converged")
        assert result["margin"] == [{"objective": "ttft_p99", "limit": 100.0, "measured": 50.0, "headroom": 0.5}]
        assert [p["passed"] for p in result["probes"]] == [True, True, True, False, False, True]

    def test_open_loop_bisects_rates_within_the_tolerance(self):
        template = StepSpec(index=0, users=64, duration_s=10, warmup_s=1, rate=1.0)
        search = CapacitySearch(template=template, slo={"ttft_p99": 100.0}, open_loop=True, start=1.0,
                                tolerance=0.05, max_steps=30)
        outcomes = simulate(search, lambda rate: rate <= 13.3)
        result = search.result(outcomes)
        assert 13.3 * 0.95 <= result["capacity"] <= 13.3 < result["first_failing"]
        assert all(o.spec.users == 64 and o.spec.rate == o.spec.level for o in outcomes)

    def test_bounded_by_steps_time_and_level(self):
        search = CapacitySearch(template=TEMPLATE, slo={"ttft_p99": 100.0}, open_loop=False, start=1, max_steps=3)
        assert len(simulate(search, lambda level: True)) == 3 and "step limit" in search.stop_reason
        now = [0.0]

        def clock() -> float:
            now[0] += 4.0  # every look at the clock: 4 s later
            return now[0]

        timed = CapacitySearch(template=TEMPLATE, slo={"ttft_p99": 100.0}, open_loop=False, start=1,
                               max_time_s=25, clock=clock)
        # begun at 4 s; steps start at 8, 12, 16 s; a fourth (from 20 s) would end past 4 + 25 s
        assert len(simulate(timed, lambda level: True)) == 3 and "time limit" in timed.stop_reason
        capped = CapacitySearch(template=TEMPLATE, slo={"ttft_p99": 100.0}, open_loop=False, start=1, max_level=6)
        assert [o.spec.level for o in simulate(capped, lambda level: True)] == [1, 2, 4, 6]
        assert "max-level" in capped.stop_reason and capped.result([])["capacity"] is None

    def test_no_level_passing_and_early_stopped_steps_count_as_missed(self):
        search = CapacitySearch(template=TEMPLATE, slo={"ttft_p99": 100.0}, open_loop=False, start=1)
        assert search.result(simulate(search, lambda level: False))["capacity"] is None
        assert "even 1 user" in search.stop_reason
        stopped = make_outcome(TEMPLATE, [{"objective": "ttft_p99", "met": True}], stopped_early="saturated: x")
        assert not search.passed(stopped)

    def test_an_open_loop_rate_past_the_servers_throughput_fails_even_if_its_latencies_passed(self):
        template = StepSpec(index=0, users=64, duration_s=5, warmup_s=0.5, rate=4.0)
        search = CapacitySearch(template=template, slo={"e2e_p99": 1000.0}, open_loop=True, start=4.0)

        def outcome(rate: float, answered: float, met: bool) -> StepOutcome:
            step = dataclasses.replace(template, rate=rate)
            return make_outcome(step, [{"objective": "e2e_p99", "met": met}],
                           metrics={"requests_sent": int(rate * 4.5), "window_s": 4.5, "requests_per_s": answered})

        # the server answers at most 14.8/s: 16/s met its latency objective in a short step, but
        # 72 requests were sent where 14.8/s answers 67 in the window
        steps = [outcome(4, 4.0, True), outcome(8, 7.9, True), outcome(16, 14.66, True), outcome(32, 14.84, False)]
        assert [search.passed(o, steps) for o in steps] == [True, True, False, False]
        assert "unsustainable: 16 requests/s sent" in search.unsustainable(steps[2], steps)
        assert search.result(steps)["capacity"] == 8
        few = outcome(1, 0.7, True)  # 4 sent, 3 answered in a short window: edge effects, not a queue
        assert search.passed(few, [few])

    def test_early_stop_on_ttft_far_past_its_objective_but_never_in_the_warmup(self):
        search = CapacitySearch(template=TEMPLATE, slo={"ttft_p99": 100.0}, open_loop=False, start=1)
        slow = [{"inflight": 4, "done": 30, "failed": 0, "ttft_ms_recent": [250.0] * 30}]
        assert search.early_stop(TEMPLATE, 1.5, slow) is None  # still inside warm-up + 1 s
        assert "TTFT p99" in search.early_stop(TEMPLATE, 2.5, slow)
        fine = [{"inflight": 4, "done": 30, "failed": 0, "ttft_ms_recent": [150.0] * 30}]  # missed, not 2x
        assert search.early_stop(StepSpec(1, 4, 10, 1), 2.5, fine) is None

    def test_early_stop_on_a_growing_queue_and_on_errors(self):
        step = StepSpec(index=0, users=256, duration_s=30, warmup_s=1, rate=50.0)
        search = CapacitySearch(template=step, slo={"e2e_p99": 5000.0}, open_loop=True, start=50.0)

        def polls(series: list[int], index: int) -> list[str | None]:
            verdicts = []
            for second, inflight in enumerate(series, start=1):
                ttft = [20.0 * inflight] * 30
                status = {"inflight": inflight, "done": 100, "failed": 0, "ttft_ms_recent": ttft}
                verdicts.append(search.early_stop(dataclasses.replace(step, index=index), float(second), [status]))
            return verdicts

        # rising 3 polls in a row to more than 2 x 5 + 4, TTFT rising with it
        assert polls([5, 5, 8, 14, 25], 0) == [None] * 4 + ["saturated: requests in flight rose from 5 to 25 "
                                                           "through the step (the queue grows)"]
        assert polls([5, 9, 6, 12, 7, 13, 8, 12], 1) == [None] * 8  # busy but not growing
        errors = CapacitySearch(template=TEMPLATE, slo={"error_rate": 0.01}, open_loop=False, start=1)
        assert "failed" in errors.early_stop(TEMPLATE, 3.0, [{"inflight": 1, "done": 40, "failed": 10}])


def test_error_rate_objective():
    slo = parse_slo("ttft_p99=500,error_rate=0.05")
    assert slo == {"ttft_p99": 500.0, "error_rate": 0.05}
    with pytest.raises(ValueError, match="error_rate"):
        parse_slo("error_rate=2")
    records = [record(i * 10, [i * 10 + 5, i * 10 + 6]) for i in range(9)] + [record(95, [], ok=False)]
    metrics = step_metrics(records, Window(0, 10**9), slo)
    verdicts = {v["objective"]: v for v in judge(metrics, slo)}
    assert verdicts["error_rate"]["measured"] == pytest.approx(0.1) and not verdicts["error_rate"]["met"]
    assert verdicts["ttft_p99"]["met"] and metrics["goodput_per_s"] == pytest.approx(9.0)


def test_timeline_bins_in_flight_tokens_and_latencies_per_second():
    records = [record(0, [100, 200, 300]), record(500, [1600, 1700]), record(1200, [], ok=False)]
    line = step_timeline(records)
    assert line["t"] == [0.0, 1.0]
    # in flight: [0, 301 ms) + [500, 1000) in bin 0; [1000, 1701) + the failure [1200, 1201) in bin 1
    assert line["inflight"] == pytest.approx([0.301 + 0.5, 0.701 + 0.001], abs=1e-3)
    assert line["output_tokens_per_s"] == [3.0, 2.0] and line["sent"] == [2, 1] and line["failed"] == [0, 1]
    assert line["ttft_p50_ms"] == [pytest.approx(100.0), pytest.approx(1100.0)]
    assert line["itl_p50_ms"][0] == pytest.approx(100.0) and line["itl_p99_ms"][1] == pytest.approx(100.0)
    assert step_timeline([])["t"] == []


def test_requests_jsonl_holds_every_request_with_its_timings(tmp_path):
    asked = record(1500, [1600, 1610])
    asked.max_tokens, asked.requested_prompt_tokens, asked.prefix_blocks, asked.turn = 8, 40, [[3, 32]], 2
    outcome = make_outcome(StepSpec(2, 4, 10, 1), [], records=[asked, record(200, [300])],
                      window=Window(1000 * MS, 10_000 * MS))
    lines = list(read_requests(write_requests([outcome], tmp_path)))
    assert [line["send_s"] for line in lines] == [0.2, 1.5]  # in send order
    first, second = lines
    assert not first["in_window"] and second["in_window"]
    assert second["token_ms"] == [100.0, 110.0] and second["first_token_s"] == 1.6 and second["end_s"] == 1.611
    assert second["step"] == 2 and second["step_label"] == "4 users" and second["ok"] and second["status"] == 200
    assert second["request_id"] == "chatcmpl-1500" and second["completion_tokens"] == 2
    assert set(second) >= {"intended_s", "first_byte_s", "error_kind", "error", "retry_after", "retried",
                           "prompt_tokens", "content_events", "worker", "stream", "max_tokens",
                           "requested_prompt_tokens", "prefix_blocks", "turn"}
    assert (second["max_tokens"], second["requested_prompt_tokens"], second["prefix_blocks"], second["turn"]) == (
        8, 40, [[3, 32]], 2) and first["turn"] is None


def test_scraped_series_sum_label_sets_match_any_prefix_and_counters_become_rates():
    text = ("# TYPE vllm:num_requests_waiting gauge\n"
            'vllm:num_requests_waiting{model_name="a"} 2\nvllm:num_requests_waiting{model_name="b"} 3\n'
            "# TYPE chatspec:generation_tokens counter\nchatspec:generation_tokens_total 100\n")
    assert pick(text, ["num_requests_waiting", "generation_tokens_total", "absent"]) == {
        "num_requests_waiting": 5.0, "generation_tokens_total": 100.0}
    scrapes = Scrapes("u", ["num_requests_waiting", "generation_tokens_total"])
    scrapes.samples = [(10.0, {"num_requests_waiting": 1, "generation_tokens_total": 100}),
                       (11.0, {"num_requests_waiting": 4, "generation_tokens_total": 150}),
                       (12.0, {"num_requests_waiting": 2, "generation_tokens_total": 250}),
                       (20.0, {"num_requests_waiting": 9, "generation_tokens_total": 900})]
    part = scrapes.between(10.5, 15.0)
    assert part["t"] == [0.5, 1.5] and part["series"]["num_requests_waiting"] == [4, 2]
    assert part["series"]["generation_tokens_total /s"] == [None, 100.0]


def write_run(folder, label: str, ttft_ms: np.ndarray, itl_ms: float, failed: int = 0) -> None:
    """A run folder as python -m load writes it: load.json and requests.jsonl."""
    records = []
    for i, ttft in enumerate(ttft_ms):
        send = i * 50.0
        records.append(record(send, [send + ttft + k * itl_ms for k in range(4)]))
    records += [record(len(ttft_ms) * 50.0 + i, [], ok=False) for i in range(failed)]
    window = Window(0, int((len(ttft_ms) * 50 + 100) * MS))
    outcome = make_outcome(StepSpec(0, 4, 10, 0), [], records=records, window=window)
    outcome.metrics = step_metrics(records, window)
    outcome.spec = StepSpec(0, int(label.split()[0]), 10, 0)
    doc = build_document(target={}, settings={}, steps=[step_document(outcome)], started_at="now", duration_s=1)
    folder.mkdir(parents=True)
    (folder / "load.json").write_text(json.dumps(doc.to_json()))
    write_requests([outcome], folder)


class TestCompare:
    @pytest.fixture
    def runs(self, tmp_path):
        rng = np.random.default_rng(1)
        write_run(tmp_path / "a", "4 users", rng.normal(100, 5, 300), 10.0)
        write_run(tmp_path / "a2", "4 users", rng.normal(100, 5, 300), 10.0)  # the same, another sample
        write_run(tmp_path / "b", "4 users", rng.normal(130, 5, 300), 10.0, failed=30)  # TTFT +30%, errors
        return tmp_path

    def cell(self, result, metric: str, run: int = 1) -> dict:
        return next(r for r in result["rows"] if r["metric"] == metric)["runs"][run]

    def test_a_real_change_is_significant_and_noise_is_not(self, runs):
        a, a2, b = (load_run(str(runs / name)) for name in ("a", "a2", "b"))
        result = compare_runs([a, a2, b], resamples=300)
        same, worse = self.cell(result, "ttft_p50", 1), self.cell(result, "ttft_p50", 2)
        assert not same["significant"] and abs(same["delta_pct"]) < 3
        assert worse["significant"] and worse["worse"] and worse["delta_pct"] == pytest.approx(30, abs=4)
        low, high = self.cell(result, "ttft_p50", 0)["ci"]
        assert low < self.cell(result, "ttft_p50", 0)["value"] < high and high - low < 5
        assert self.cell(result, "itl_p50", 2)["delta_pct"] == pytest.approx(0, abs=1e-6)
        errors = self.cell(result, "error_rate", 2)
        assert errors["worse"] and errors["significant"] and errors["value"] == pytest.approx(30 / 330)
        found = regressions(result, 20.0)
        assert any("ttft_p50" in f for f in found) and not any("itl" in f for f in found)
        # errors from none at all: no percentage, but a significant worsening past any limit
        assert [f for f in regressions(result, 50.0) if "error_rate" in f] == [
            f for f in found if "error_rate" in f] and any("error_rate" in f and "against 0" in f for f in found)
        assert all("error_rate" in f for f in regressions(result, 50.0))

    def test_cli_exit_codes_and_html(self, runs, capsys):
        out = runs / "cmp"
        assert compare_main([str(runs / "a"), str(runs / "a2"), "--fail-if-worse", "10", "--resamples", "200",
                             "--report-dir", str(out)]) == 0
        assert compare_main([str(runs / "a"), str(runs / "b"), "--fail-if-worse", "10", "--resamples", "200",
                             "--report-dir", str(out)]) == 1
        html = (out / "compare.html").read_text()
        assert "WORSE by more than 10%" in html and "data:image/png;base64," in html and "<script" not in html
        assert json.loads((out / "compare.json").read_text())["regressions"]
        assert compare_main([str(runs / "a"), str(runs / "nope")]) == 2
        assert "not a load report folder" in capsys.readouterr().err


def test_report_level_plots_only_for_several_levels_and_a_timeline_per_step():
    outcome = make_outcome(StepSpec(0, 2, 10, 1), [], records=[record(1500, [1600, 1610]), record(2500, [2600])],
                      window=Window(1000 * MS, 10_000 * MS))
    outcome.metrics = step_metrics(outcome.records, outcome.window)
    one = [step_document(outcome)]
    html = render_load_html(build_document(target={}, settings={}, steps=one, started_at="now", duration_s=1))
    names = re.findall(r'<img alt="([^"]+)"', html)
    assert names == ["latency CDFs", "2 users over time", "lengths 2 users"]
    other = make_outcome(StepSpec(1, 4, 10, 1), [], records=outcome.records, window=outcome.window,
                         metrics=outcome.metrics)
    doc = build_document(target={}, settings={}, steps=[*one, step_document(other)], started_at="now", duration_s=1)
    doc.capacity = {"mode": "users", "capacity": 2.0, "capacity_label": "2 users", "first_failing": 4.0,
                       "stop_reason": "converged", "margin": [], "probes": []}
    html = render_load_html(doc)
    assert re.findall(r'<img alt="([^"]+)"', html)[:2] == ["throughput", "latency percentiles"]
    assert "CAPACITY 2 users" in html and 'id="capacity"' in html


def test_the_verdict_line_names_the_error_kinds_whenever_there_are_errors():
    records = [record(1500 + i, [1600 + i]) for i in range(3)] + [record(1700, [], ok=False)]
    outcome = make_outcome(StepSpec(0, 2, 10, 1), [], records=records, window=Window(1000 * MS, 10_000 * MS))
    outcome.metrics = step_metrics(records, outcome.window)
    html = render_load_html(build_document(target={}, settings={}, steps=[step_document(outcome)],
                                           started_at="now", duration_s=1))
    summary = re.search(r'<p id="error-summary">(.*?)</p>', html, re.S).group(1)
    assert "1 of 4 requests" in summary and "25.0%" in summary and "http_5xx 1" in summary
    assert "ERRORS 1/4" in html


def test_the_search_says_what_each_step_told_it():
    search = CapacitySearch(template=TEMPLATE, slo={"ttft_p99": 100.0}, open_loop=False, start=1)
    outcomes = simulate(search, lambda level: level <= 2)
    assert search.progress_line(outcomes[:1], outcomes[1].spec) == (
        "  capacity search: 1 users met every objective; next: 2 users")
    last = search.progress_line(outcomes, None)
    assert last.startswith("  capacity search: 3 users missed ttft_p99; done: converged")
