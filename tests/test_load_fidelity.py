"""Did `python -m load` send what it was asked, when it was asked? Judged by the server, not the tool.

Every run goes against a mock server started with `--record` (reference_server/recording.py): the
server's own line per request received is the evidence. Each load shape is held to what its
arguments ask: the exact count (a trace's rows, --max-requests; rate x duration within the
statistics of the arrival process), each arrival at its intended time (a trace's timestamps / speed,
i / rate for constant arrivals, the schedule in requests.jsonl otherwise, whose own statistics are
checked too), the concurrency of a closed loop, and the bodies the workload plans.

Timing tolerances are generous (at most one in ten arrivals over 30 ms late, none over 250 ms, once
the clocks are aligned; the first request of a step goes out as its users start, ~30 ms late) so
they hold on a loaded 2-core CI machine; they catch requests sent seconds late or not at all. Tight
accuracy is a benchmark's business.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from oracle import (
    LATEST_S,
    RecordFile,
    assert_on_time,
    gaps_s,
    in_flight,
    load_requests,
    match_arrivals,
    match_pairs,
    prompt_text,
)

from load.export import read_requests
from reference_server.engines.mock import MockEngine
from reference_server.launcher import RunningServer, running_server

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
EXACT = ("--extra-body", '{"logit_bias": {"0": -100}}')  # the mock never ends early: answers are max_tokens long
TOKENIZER = MockEngine()  # the mock server's own token count of a prompt

Server = tuple[RunningServer, RecordFile]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    path = tmp_path_factory.mktemp("oracle") / "record.jsonl"
    with running_server("--ttft-ms", "30", "--itl-ms", "2", "--max-queue", "1000", "--record", str(path),
                        engine="mock") as running:
        yield running, RecordFile(path)


@pytest.fixture(scope="module")
def slotted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Two generation slots: past two users a queue forms and TTFT grows (a capacity to find)."""
    path = tmp_path_factory.mktemp("oracle-slots") / "record.jsonl"
    with running_server("--ttft-ms", "30", "--itl-ms", "2", "--mock-slots", "2", "--max-queue", "1000",
                        "--record", str(path), engine="mock") as running:
        yield running, RecordFile(path)


@dataclass
class Run:
    """One finished `python -m load` run: what the server received, and the tool's own files."""

    records: list[dict[str, Any]]  # the load's requests as the server recorded them, in arrival order
    report: Path

    @property
    def steps(self) -> list[dict[str, Any]]:
        return json.loads((self.report / "load.json").read_text())["steps"]

    @property
    def planned(self) -> list[dict[str, Any]]:
        """requests.jsonl: the tool's line per request (its intended time, worker, step, the answer's id)."""
        return list(read_requests(self.report / "requests.jsonl"))

    def arrivals(self) -> list[int]:
        return [r["arrival_ns"] for r in self.records]

    def by_step(self) -> dict[int, list[dict[str, Any]]]:
        """The server's records grouped by the step (and worker) the tool says sent them, joined on the
        answer's id. Every record must join: a request the tool has no line for is itself a defect."""
        planned = {line["request_id"]: line for line in self.planned}
        unknown = [r for r in self.records if r["response_id"] not in planned]
        assert not unknown, f"{len(unknown)} requests reached the server that requests.jsonl does not hold"
        steps: dict[int, list[dict[str, Any]]] = {}
        for record in self.records:
            line = planned[record["response_id"]]
            steps.setdefault(line["step"], []).append({**record, "plan": line})
        return steps


def run_load(server: Server, tmp_path: Path, *args: str, timeout: float = 180) -> Run:
    """`python -m load` against the recorded server; the run must succeed."""
    running, record = server
    mark = record.mark()
    report = tmp_path / "report"
    result = subprocess.run([sys.executable, "-m", "load", "--quiet", "--base-url", running.base_url,
                             f"--api-key={running.api_key}", "--model", running.model, "--warmup", "0", *EXACT,
                             "--report-dir", str(report), *args],
                            capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    run = Run(load_requests(record.since(mark)), report)
    assert_report_agrees(run)
    return run


def assert_report_agrees(run: Run) -> None:
    """In addition to the server's evidence: each step's fidelity block in load.json counts what the
    server received, and finds nothing wrong with it."""
    steps = run.steps
    seen = {0: len(run.records)} if len(steps) == 1 else {i: len(v) for i, v in run.by_step().items()}
    for index, step in enumerate(steps):
        fidelity = step["fidelity"]
        assert fidelity["ok"], (step["label"], fidelity["problems"])
        assert fidelity["sent"] == fidelity["done"] == seen.get(index, 0), (step["label"], fidelity, seen)


def tokens(messages: list[dict[str, Any]]) -> int:
    """The prompt's length as the mock server counts it (usage.prompt_tokens)."""
    return len(TOKENIZER.tokenize_chat(messages))


def words(text: str) -> list[str]:
    return text.split()


def common_prefix(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


# ---- closed loop ---------------------------------------------------------------------------------


def test_closed_loop_holds_its_users_in_flight_for_the_whole_duration(server, tmp_path):
    users, duration, prompt = 4, 4.0, 60
    run = run_load(server, tmp_path, "--users", str(users), "--duration", str(duration), "--output-tokens", "40",
                   "--prompt-tokens", str(prompt))
    first, last = min(run.arrivals()), max(run.arrivals())
    assert (last - first) / 1e9 == pytest.approx(duration, abs=0.5)  # sent from start to end, then stopped
    steady = in_flight(run.records, first + int(0.5e9), first + int((duration - 0.5) * 1e9), above=users)
    # 4 users, each request ~110 ms at the server and a few ms of client turnaround between two
    assert steady.mean >= users - 0.5, steady
    assert steady.above_share <= 0.01, steady  # never more than the users asked
    assert all(r["status"] == 200 and r["body"]["max_tokens"] == 40 for r in run.records)
    assert all(abs(tokens(r["body"]["messages"]) - prompt) <= 2 for r in run.records)
    assert run.steps[0]["metrics"]["requests_total"] == len(run.records)  # the report agrees with the server


def test_the_shortest_prompts_asked_for_still_never_repeat(server, tmp_path):
    """A prompt target below what a distinct prompt needs: the server receives no prompt twice
    (it used to get one of 51 one-word prompts, which a prompt cache answers without prefill)."""
    run = run_load(server, tmp_path, "--users", "4", "--max-requests", "300", "--output-tokens", "2",
                   "--prompt-tokens", "4")
    measured = [r for r in run.records if r["body"].get("max_tokens") == 2 and r["body"].get("stream")]
    assert len(measured) == 300
    prompts = [json.dumps(r["body"]["messages"]) for r in measured]
    assert len(set(prompts)) == len(prompts)


# ---- open loop -----------------------------------------------------------------------------------

# shape of the inter-arrival gaps: coefficient of variation (0 constant, 1 Poisson, 1/sqrt(0.5) gamma 0.5)
CV = {"constant": 0.0, "poisson": 1.0, "gamma": math.sqrt(2.0)}


def check_schedule(intended: list[float], rate: float, arrival: str, duration: float) -> None:
    """The plan itself: the arrival process asked for, covering the whole duration without holes."""
    n = len(intended)
    expected, cv = rate * duration, CV[arrival]
    # the step ends at `duration` (the slot due at that very moment may still go)
    assert all(0 <= t <= duration for t in intended), (min(intended), max(intended))
    if arrival == "constant":
        assert intended == pytest.approx([i / rate for i in range(n)], abs=1e-6)
        assert abs(n - expected) <= 1
        return
    # a renewal process: the count has variance ~ rate x duration x CV^2; 4.5 sigma
    assert abs(n - expected) <= 4.5 * math.sqrt(expected * cv * cv), (n, expected)
    gaps = gaps_s([int(t * 1e9) for t in intended])
    assert statistics.mean(gaps) == pytest.approx(1 / rate, abs=4.5 * cv / rate / math.sqrt(len(gaps)))
    # the gaps' spread names the process (a sample CV leaves [cv / 2, 2 cv] about once in 4000 schedules)
    assert cv / 2 <= statistics.stdev(gaps) / statistics.mean(gaps) <= 2 * cv
    assert max(gaps) < 1.5 and max(intended) > duration - 1.0  # no hole, and it ran to the end


@pytest.mark.parametrize("arrival", ["poisson", "constant", "gamma"])
def test_open_loop_for_a_duration_sends_its_schedule_on_time(server, tmp_path, arrival):
    rate, duration = 20.0, 3.0
    run = run_load(server, tmp_path, "--rate", str(rate), "--arrival", arrival, "--duration", str(duration),
                   "--output-tokens", "10")
    intended = sorted(line["intended_s"] for line in run.planned)
    check_schedule(intended, rate, arrival, duration)
    assert len(run.records) == len(intended)  # every planned request reached the server, and no other
    assert_on_time(match_arrivals(run.arrivals(), intended))
    assert all(r["body"]["max_tokens"] == 10 and r["status"] == 200 for r in run.records)


@pytest.mark.parametrize("arrival", ["poisson", "constant", "gamma"])
def test_open_loop_with_max_requests_sends_exactly_that_many_on_time(server, tmp_path, arrival):
    rate, count = 4.0, 10
    run = run_load(server, tmp_path, "--rate", str(rate), "--arrival", arrival, "--max-requests", str(count),
                   "--duration", "60", "--output-tokens", "6")
    assert len(run.records) == count
    intended = [i / rate for i in range(count)] if arrival == "constant" else [
        line["intended_s"] for line in run.planned]
    assert_on_time(match_arrivals(run.arrivals(), intended))
    assert all(r["body"]["max_tokens"] == 6 for r in run.records)


def test_open_loop_over_workers_sends_exactly_the_count_on_each_workers_schedule(server, tmp_path):
    rate, count, workers = 6.0, 12, 2
    run = run_load(server, tmp_path, "--workers", str(workers), "--rate", str(rate), "--arrival", "constant",
                   "--max-requests", str(count), "--duration", "60", "--output-tokens", "6")
    assert len(run.records) == count
    per_worker: dict[int, list[int]] = {}
    for record in run.by_step()[0]:
        per_worker.setdefault(record["plan"]["worker"], []).append(record["arrival_ns"])
    assert sorted(len(v) for v in per_worker.values()) == [count // workers] * workers
    for arrivals in per_worker.values():  # each worker: rate / workers, constant, from its own start
        assert_on_time(match_arrivals(arrivals, [i * workers / rate for i in range(len(arrivals))]))


def test_a_rate_sweep_sends_each_steps_count_at_its_rate(server, tmp_path):
    rates, count = (5.0, 10.0), 10
    run = run_load(server, tmp_path, "--rate", "5", "--arrival", "constant", "--sweep", ",".join(map(str, rates)),
                   "--max-requests", str(count), "--duration", "60", "--output-tokens", "6")
    steps = run.by_step()
    assert sorted(steps) == [0, 1] and len(run.records) == 2 * count
    for index, rate in enumerate(rates):
        arrivals = [r["arrival_ns"] for r in steps[index]]
        assert len(arrivals) == count
        assert_on_time(match_arrivals(arrivals, [i / rate for i in range(count)]))
    assert max(r["arrival_ns"] for r in steps[0]) < min(r["arrival_ns"] for r in steps[1])  # one after the other


# ---- capacity search -----------------------------------------------------------------------------


def test_capacity_search_over_users_holds_each_probed_level(slotted, tmp_path):
    """Two slots, requests of ~110 ms: with 3 or 4 users one waits for a slot, past the TTFT objective;
    1 and 2 never wait (TTFT ~30 ms). Judged at p90, so that one stall of a busy machine among ~40
    requests cannot move the answer (a p99 over so few is their maximum)."""
    run = run_load(slotted, tmp_path, "--find-capacity", "--users", "1", "--slo", "ttft_p90=80",
                   "--duration", "2", "--capacity-max-steps", "4", "--output-tokens", "40")
    steps, levels = run.by_step(), [int(step["level"]) for step in run.steps]
    assert levels[:3] == [1, 2, 4] and len(levels) == 4  # up while met, then down: the search went both ways
    assert sorted(steps) == list(range(len(levels)))
    for index, users in enumerate(levels):
        records = steps[index]
        first, last = min(r["arrival_ns"] for r in records), max(r["arrival_ns"] for r in records)
        seen = in_flight(records, first + int(0.2e9), last, above=users)
        assert seen.mean >= 0.8 * users and seen.above_share <= 0.01, (users, seen)


def test_capacity_search_over_rates_sends_each_probed_rate(server, tmp_path):
    duration = 1.5
    run = run_load(server, tmp_path, "--find-capacity", "--rate", "4", "--arrival", "constant",
                   "--slo", "ttft_p99=5000", "--duration", str(duration), "--capacity-max-steps", "3",
                   "--output-tokens", "6")
    steps, rates = run.by_step(), [step["level"] for step in run.steps]
    assert rates == [4, 8, 16]
    for index, rate in enumerate(rates):
        arrivals = [r["arrival_ns"] for r in steps[index]]
        assert abs(len(arrivals) - rate * duration) <= 1, (rate, len(arrivals))
        assert_on_time(match_arrivals(arrivals, [i / rate for i in range(len(arrivals))]))


# ---- trace replay --------------------------------------------------------------------------------

BLOCK = 16  # --trace-block-tokens


def write_trace(path: Path, times_ms: list[int]) -> list[dict[str, Any]]:
    """A Mooncake-layout trace: a unique output_length per row (it names the row at the server), two
    groups of rows sharing their first block (even and odd rows), a block of its own each after it."""
    rows = [{"timestamp": t, "input_length": 44, "output_length": 3 + i, "hash_ids": [100 + i % 2, 200 + i]}
            for i, t in enumerate(times_ms)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


def check_trace(run: Run, rows: list[dict[str, Any]], speed: float) -> None:
    """Every row arrived once, at its own time / speed, with its lengths and shared prefix."""
    by_length = {row["output_length"]: row for row in rows}
    assert sorted(r["body"]["max_tokens"] for r in run.records) == sorted(by_length)
    start = rows[0]["timestamp"]
    pairs = [(r["arrival_ns"], (by_length[r["body"]["max_tokens"]]["timestamp"] - start) / 1000 / speed)
             for r in run.records]
    assert_on_time(match_pairs(pairs))
    prompts = {}
    for record in run.records:
        row = by_length[record["body"]["max_tokens"]]
        assert abs(tokens(record["body"]["messages"]) - row["input_length"]) <= 2
        prompts[row["output_length"]] = (row["hash_ids"][0], words(prompt_text(record["body"])))
    for a, (group_a, words_a) in prompts.items():
        for b, (group_b, words_b) in prompts.items():
            if a < b:
                shared = common_prefix(words_a, words_b)
                # "Continue this list:" (3 words), then the first block's ~16 words when the group is the same
                assert shared >= 3 + 12 if group_a == group_b else shared < 3 + 4, (a, b, shared)


def test_trace_at_its_own_speed_keeps_its_times_across_idle_gaps(server, tmp_path):
    """Bursts with 5 s and 4 s of silence between them: a replay must not stop in a gap."""
    times = [0, 150, 300, 450, 600, 750, 5750, 5900, 6050, 6200, 6350, 6500, 10500, 10650, 10800]
    rows = write_trace(tmp_path / "trace.jsonl", times)
    run = run_load(server, tmp_path, "--workload", "trace", "--trace", str(tmp_path / "trace.jsonl"),
                   "--trace-block-tokens", str(BLOCK), "--duration", "60")
    check_trace(run, rows, 1.0)


@pytest.mark.parametrize("workers", [1, 2])
def test_trace_ten_times_faster_keeps_its_times(server, tmp_path, workers):
    """At speed 10 the 40 s and 20 s gaps of the trace are 4 s and 2 s of silence."""
    times = [0, 500, 1000, 1500, 2000, 2500, 42500, 43000, 43500, 44000, 64000, 64500]
    rows = write_trace(tmp_path / "trace.jsonl", times)
    run = run_load(server, tmp_path, "--workload", "trace", "--trace", str(tmp_path / "trace.jsonl"),
                   "--trace-speed", "10", "--trace-block-tokens", str(BLOCK), "--workers", str(workers),
                   "--duration", "60")
    check_trace(run, rows, 10.0)


# ---- workloads -----------------------------------------------------------------------------------


def test_multi_turn_carries_the_history_after_the_think_time(server, tmp_path):
    think, turns, users = 0.5, 3, 2
    run = run_load(server, tmp_path, "--workload", "multi-turn", "--turns", str(turns), "--think-time", str(think),
                   "--prompt-tokens", "20", "--output-tokens", "5", "--users", str(users),
                   "--max-requests", str(users * turns), "--duration", "60")
    assert len(run.records) == users * turns
    by_history = {json.dumps(r["body"]["messages"]): r for r in run.records}
    chains = 0
    for record in run.records:
        messages = record["body"]["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2) + ["user"]
        if len(messages) == 1:
            chains += 1
            continue
        previous = by_history.get(json.dumps(messages[:-2]))
        assert previous is not None, "a later turn whose history no earlier request sent"
        assert messages[-2]["content"]  # the server's answer, carried into the next turn
        waited = (record["arrival_ns"] - previous["end_ns"]) / 1e9
        assert think - 0.005 <= waited <= think + LATEST_S, waited
    assert chains == users  # two conversations, each of three turns
    assert max(len(r["body"]["messages"]) for r in run.records) == 2 * turns - 1


def test_shared_prefix_bodies_start_with_their_groups_system_prompt(server, tmp_path):
    count, prefix = 16, 40
    run = run_load(server, tmp_path, "--workload", "shared-prefix", "--groups", "2", "--prefix-tokens", str(prefix),
                   "--prompt-tokens", "10", "--output-tokens", "4", "--users", "2", "--max-requests", str(count),
                   "--duration", "60")
    assert len(run.records) == count
    systems = Counter(r["body"]["messages"][0]["content"] for r in run.records)
    assert len(systems) == 2 and all(r["body"]["messages"][0]["role"] == "system" for r in run.records)
    empty = tokens([{"role": "system", "content": ""}])
    for system in systems:
        assert abs(tokens([{"role": "system", "content": system}]) - empty - prefix) <= 2
    suffixes = [prompt_text({"messages": r["body"]["messages"][1:]}) for r in run.records]
    assert len(set(suffixes)) == count  # a fresh suffix each
    assert all(r["body"]["max_tokens"] == 4 for r in run.records)


def test_dataset_lines_are_sent_in_file_order_with_their_max_tokens(server, tmp_path):
    entries = [{"messages": [{"role": "user", "content": "first line"}], "max_tokens": 3},
               [{"role": "system", "content": "be brief"}, {"role": "user", "content": "second line"}],
               {"messages": [{"role": "user", "content": "third line"}], "max_tokens": 7}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    run = run_load(server, tmp_path, "--dataset", str(tmp_path / "d.jsonl"), "--users", "1", "--max-requests", "6",
                   "--output-tokens", "5", "--duration", "60")
    expected = [(entries[0]["messages"], 3), (entries[1], 5), (entries[2]["messages"], 7)]
    sent = [(r["body"]["messages"], r["body"]["max_tokens"]) for r in run.records]
    assert len(sent) == 6
    assert sent[0] in expected, sent[0]
    start = expected.index(sent[0])  # each user starts at a line of its own, then goes in file order
    assert sent == [expected[(start + i) % 3] for i in range(6)]


def test_sharegpt_sends_each_first_question_with_its_answers_length(server, tmp_path):
    conversations = json.loads((DATA / "sharegpt_sample.json").read_text())
    usable = []
    for item in conversations:
        turns = item["conversations"]
        for a, b in zip(turns, turns[1:], strict=False):
            if a["from"] == "human" and b["from"] == "gpt":
                user = [{"role": "user", "content": a["value"]}]
                answer = tokens([{"role": "user", "content": b["value"]}]) - tokens([{"role": "user", "content": ""}])
                usable.append((user, max(1, answer)))
                break
    assert len(usable) == 4
    run = run_load(server, tmp_path, "--workload", "sharegpt", "--dataset", str(DATA / "sharegpt_sample.json"),
                   "--users", "1", "--max-requests", "8", "--duration", "60")
    sent = [(r["body"]["messages"], r["body"]["max_tokens"]) for r in run.records]
    assert len(sent) == 8
    assert sent[0] in usable, sent[0]
    start = usable.index(sent[0])
    assert sent == [usable[(start + i) % 4] for i in range(8)]


