"""Every workload end to end: `python -m load` against the mock engine (known TTFT and ITL, one token
a word), in one process and over workers. Request counts, lengths and timing are checked against what
was asked; runs are short and bounded (tens of requests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from oracle import LATEST_S, RecordFile, assert_on_time, load_requests, match_arrivals

from reference_server.launcher import running_server

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
EXACT = ("--extra-body", '{"logit_bias": {"0": -100}}')  # the mock never ends early: served = max_tokens
MOCK_TTFT_MS = 30.0


def run_load(server, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "load", "--quiet", "--base-url", server.base_url,
                           f"--api-key={server.api_key}", "--model", server.model, "--warmup", "0", "--duration", "60",
                           *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def step_of(directory: Path) -> dict:
    return json.loads((directory / "load.json").read_text())["steps"][0]


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> RecordFile:
    """What the mock server received (its --record file): the evidence of what a run sent, and when."""
    return RecordFile(tmp_path_factory.mktemp("record") / "record.jsonl")


@pytest.fixture(scope="module")
def mock_server(record):
    with running_server("--ttft-ms", str(MOCK_TTFT_MS), "--itl-ms", "2", "--max-queue", "1000",
                        "--record", str(record.path), engine="mock") as server:
        yield server


@pytest.mark.parametrize("workers", [1, 2])
def test_length_distributions_are_served_as_asked(mock_server, tmp_path, workers):
    lengths = tmp_path / "outputs.txt"
    lengths.write_text("3 5 9\n")
    result = run_load(mock_server, *EXACT, "--users", "3", "--max-requests", "30", "--prompt-tokens",
                      "uniform:20,120", "--output-tokens", f"file:{lengths}", "--workers", str(workers),
                      "--report-dir", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr
    step = step_of(tmp_path / "r")
    assert step["client"]["workers"] == workers
    workload = step["workload"]
    assert step["metrics"]["requests_ok"] == 30 and workload["output_short"] == 0
    prompt, output = workload["input_tokens"], workload["output_tokens"]
    assert prompt["requested_counts"] == prompt["served_counts"] and prompt["served"]["count"] == 30
    assert 20 <= prompt["served"]["min"] and prompt["served"]["max"] <= 120 and prompt["served"]["max"] > 60
    assert output["requested_counts"] == output["served_counts"]
    assert {output["served"]["min"], output["served"]["max"]} <= {3, 5, 9}
    assert "0 requests served fewer than asked" in result.stdout
    html = (tmp_path / "r" / "load.html").read_text()
    assert 'id="lengths"' in html and 'alt="lengths 3 users"' in html


def test_a_server_that_cuts_outputs_short_is_visible(tmp_path):
    """A 64-token context: prompt + max_tokens over it and the server lowers max_tokens (documented)."""
    with running_server("--n-ctx", "64", engine="mock") as server:
        result = run_load(server, *EXACT, "--users", "2", "--max-requests", "10", "--prompt-tokens", "30",
                          "--output-tokens", "uniform:40,60", "--report-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    workload = step_of(tmp_path)["workload"]
    assert workload["output_short"] == 10
    assert workload["output_tokens"]["requested"]["min"] >= 40 and workload["output_tokens"]["served"]["max"] <= 34


def test_shared_prefix_reports_its_sharing_ratio(mock_server, tmp_path):
    result = run_load(mock_server, *EXACT, "--workload", "shared-prefix", "--groups", "1", "--prefix-tokens", "50",
                      "--prompt-tokens", "10", "--output-tokens", "3", "--users", "1", "--max-requests", "12",
                      "--report-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    step = step_of(tmp_path)
    sharing = step["workload"]["prefix_sharing"]
    served = step["workload"]["input_tokens"]["served"]
    assert step["metrics"]["requests_ok"] == 12 and served["min"] == served["max"]  # every prompt the same size
    assert sharing["reusable_prompt_tokens"] == 11 * 50  # the first request of the group had nothing to reuse
    assert sharing["prompt_tokens"] == 12 * served["max"]
    assert sharing["ratio"] == pytest.approx(550 / (12 * served["max"]))
    assert "prefix-sharing ratio" in result.stdout


def test_multi_turn_carries_the_history_and_reports_each_turn(mock_server, record, tmp_path):
    think = 0.3
    mark = record.mark()
    result = run_load(mock_server, *EXACT, "--workload", "multi-turn", "--turns", "3", "--think-time", str(think),
                      "--prompt-tokens", "20", "--output-tokens", "5", "--users", "1", "--max-requests", "6",
                      "--report-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    step = step_of(tmp_path)
    turns = step["workload"]["per_turn"]
    assert [(t["turn"], t["requests"]) for t in turns] == [(1, 2), (2, 2), (3, 2)]
    prompts = [t["prompt_tokens_mean"] for t in turns]
    assert prompts[0] == 20 and prompts[1] >= prompts[0] + 5 + 19 and prompts[2] >= prompts[1] + 5 + 19
    assert all(t["ttft_ms"]["min"] >= MOCK_TTFT_MS for t in turns)
    # At the server: each later turn came a think time after the answer to the turn before it
    # (the request whose messages are its history), four times in two conversations of three turns.
    arrived = load_requests(record.since(mark))
    assert len(arrived) == 6
    answered = {json.dumps(r["body"]["messages"]): r["end_ns"] for r in arrived}
    waits = [(r["arrival_ns"] - answered[json.dumps(r["body"]["messages"][:-2])]) / 1e9
             for r in arrived if len(r["body"]["messages"]) > 1]
    assert len(waits) == 4 and all(think - 0.005 <= wait <= think + LATEST_S for wait in waits), waits
    assert "turn 3: 2 requests" in result.stdout
    assert 'id="turns"' in (tmp_path / "load.html").read_text()


def test_sharegpt_asks_for_each_answers_length(mock_server, tmp_path):
    result = run_load(mock_server, *EXACT, "--workload", "sharegpt", "--dataset", str(DATA / "sharegpt_sample.json"),
                      "--users", "1", "--max-requests", "8", "--report-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    workload = step_of(tmp_path)["workload"]
    output, prompt = workload["output_tokens"], workload["input_tokens"]
    # the four usable conversations, twice: answers of 12, 17, 35 and 1 words (the mock: a token a word)
    assert output["requested"]["count"] == 8 and output["requested"]["mean"] == pytest.approx((12 + 17 + 35 + 1) / 4)
    assert output["served_counts"] == output["requested_counts"]
    assert prompt["requested_counts"] == prompt["served_counts"] and prompt["requested"]["count"] == 8


@pytest.mark.parametrize("workers", [1, 2])
def test_trace_replay_keeps_the_recorded_times_and_shares_prefixes(mock_server, record, tmp_path, workers):
    trace = [json.loads(line) for line in (DATA / "mooncake_trace_sample.jsonl").read_text().splitlines()]
    speed, block = 2.0, 16
    mark = record.mark()
    result = run_load(mock_server, *EXACT, "--workload", "trace", "--trace", str(DATA / "mooncake_trace_sample.jsonl"),
                      "--trace-speed", str(speed), "--trace-block-tokens", str(block), "--workers", str(workers),
                      "--report-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    step = step_of(tmp_path)
    metrics, workload = step["metrics"], step["workload"]
    assert step["label"] == "trace x2" and metrics["requests_ok"] == len(trace) == metrics["requests_total"]
    assert step["client"]["workers"] == workers
    assert metrics["send_lag_ms"]["count"] == len(trace)  # every request has its intended time from the trace
    # At the server: every row arrived, each at its own time in the trace (at twice its speed)
    arrived = load_requests(record.since(mark))
    assert sorted(r["body"]["max_tokens"] for r in arrived) == sorted(r["output_length"] for r in trace)
    assert_on_time(match_arrivals([r["arrival_ns"] for r in arrived], [r["timestamp"] / 1000 / speed for r in trace]))
    assert sorted(workload["input_tokens"]["served_counts"]) == sorted(workload["input_tokens"]["requested_counts"])
    assert workload["input_tokens"]["served"]["mean"] == pytest.approx(sum(r["input_length"] for r in trace) / 12)
    assert workload["output_tokens"]["served"]["mean"] == pytest.approx(sum(r["output_length"] for r in trace) / 12)
    # The ratio, independently: leading blocks (16 tokens, the last cut by the 6 template tokens) seen before.
    # A block sent shorter before (cut at its prompt's end) shares only that much.
    seen: dict[int, int] = {}
    reusable = 0
    for row in trace:
        budget, covered, shared = row["input_length"] - 6, 0, True
        for hash_id in row["hash_ids"]:
            tokens = min(block, budget - covered)
            if tokens < 1:
                break
            if shared:
                reusable += min(tokens, seen.get(hash_id, 0))
                shared = seen.get(hash_id, 0) >= tokens
            seen[hash_id] = max(seen.get(hash_id, 0), tokens)
            covered += tokens
    sharing = workload["prefix_sharing"]
    assert sharing["reusable_prompt_tokens"] == reusable > 0
    assert sharing["prompt_tokens"] == sum(r["input_length"] for r in trace)


def test_shared_prefix_and_multi_turn_over_workers(mock_server, tmp_path):
    shared = run_load(mock_server, *EXACT, "--workers", "2", "--workload", "shared-prefix", "--groups", "2",
                      "--prefix-tokens", "40", "--prompt-tokens", "uniform:5,15", "--output-tokens", "4",
                      "--users", "4", "--max-requests", "20", "--report-dir", str(tmp_path / "s"))
    assert shared.returncode == 0, shared.stderr
    step = step_of(tmp_path / "s")
    assert step["client"]["workers"] == 2 and step["metrics"]["requests_ok"] == 20
    assert step["workload"]["prefix_sharing"]["reusable_prompt_tokens"] >= (20 - 2) * 40
    turns = run_load(mock_server, *EXACT, "--workers", "2", "--workload", "multi-turn", "--turns", "2",
                     "--think-time", "0", "--output-tokens", "3", "--users", "2", "--max-requests", "8",
                     "--report-dir", str(tmp_path / "t"))
    assert turns.returncode == 0, turns.stderr
    per_turn = step_of(tmp_path / "t")["workload"]["per_turn"]
    assert [(t["turn"], t["requests"]) for t in per_turn] == [(1, 4), (2, 4)]


@pytest.mark.parametrize(("args", "message"), [
    (("--prompt-tokens", "uniform:9,1"), "--prompt-tokens: 'uniform:9,1': uniform needs"),
    (("--workload", "trace"), "--workload trace needs --trace FILE"),
    (("--workload", "trace", "--trace", str(DATA / "mooncake_trace_sample.jsonl"), "--rate", "2"), "no --rate"),
    (("--workload", "sharegpt", "--dataset", str(DATA / "mooncake_trace_sample.jsonl")), "ShareGPT layout"),
])
def test_a_workload_that_cannot_run_exits_2_with_one_line(mock_server, tmp_path, args, message):
    result = run_load(mock_server, *args, "--report-dir", str(tmp_path), timeout=60)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "load.json").exists()


@pytest.mark.parametrize("stream", ["--stream", "--no-stream"])
def test_tools_requests_offer_the_tools_and_count_the_calls(mock_server, record, tmp_path, stream):
    """Every request the server received carries the tools and a named tool_choice; every answer is a
    call, counted as such; a streamed call's TTFT is its first delta, which the mock sends after its TTFT."""
    mark = record.mark()
    result = run_load(mock_server, "--workload", "tools", "--tool-choice", "named", "--users", "2",
                      "--max-requests", "12", "--output-tokens", "40", stream, "--report-dir", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr
    received = [r for r in record.since(mark) if "tools" in r["body"]]  # not the preflight
    assert len(received) == 12
    names = {"get_weather", "search_documents", "create_event"}
    for row in received:
        body = row["body"]
        assert {t["function"]["name"] for t in body["tools"]} == names
        assert body["tool_choice"]["function"]["name"] in names
    metrics = step_of(tmp_path / "r")["metrics"]
    assert metrics["requests_ok"] == 12 and metrics["requests_with_tool_calls"] == 12
    assert metrics["tool_calls_total"] == 12
    if stream == "--stream":
        assert metrics["ttft_ms"]["min"] >= MOCK_TTFT_MS * 0.9
        assert metrics["token_count_mismatches"] == 0  # a call's opening delta is not a token


def test_several_calls_in_one_answer_keep_the_mocks_token_gaps(mock_server, tmp_path):
    """required with three tools: three calls per answer, each a generation of its own; the tokens
    of a later call keep the mock's inter-token gap instead of arriving in one burst."""
    result = run_load(mock_server, "--workload", "tools", "--tool-choice", "required", "--users", "1",
                      "--max-requests", "4", "--output-tokens", "60", "--report-dir", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr
    metrics = step_of(tmp_path / "r")["metrics"]
    assert metrics["requests_ok"] == 4 and metrics["tool_calls_total"] == 12
    assert metrics["itl_ms"]["p50"] >= 1.5  # the fixture's mock sends a token every 2 ms
