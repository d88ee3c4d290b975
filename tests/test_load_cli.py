"""`python -m load` end to end against the reference server's mock engine (known TTFT and ITL).

Each run is a subprocess: Locust monkey-patches the interpreter for gevent, which must not leak
into the test process. Runs are short and bounded (seconds, tens of requests).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from oracle import RecordFile, assert_on_time, load_requests, match_arrivals, prompt_text

from load.export import read_requests
from reference_server.launcher import free_port, running_server

ROOT = Path(__file__).resolve().parent.parent


def run_load(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "load", "--quiet", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def target(server) -> tuple[str, ...]:
    """The CLI arguments that point a run at a launched server (`--api-key=KEY`: a random key may
    begin with '-', which argparse would take for an option)."""
    return ("--base-url", server.base_url, f"--api-key={server.api_key}", "--model", server.model)


def report(directory: Path) -> dict:
    return json.loads((directory / "load.json").read_text())


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> RecordFile:
    """What the mock server received (its --record file): the evidence of what a run sent."""
    return RecordFile(tmp_path_factory.mktemp("record") / "record.jsonl")


@pytest.fixture(scope="module")
def mock_server(record):
    with running_server("--ttft-ms", "30", "--itl-ms", "5", "--max-queue", "1000", "--record", str(record.path),
                        engine="mock") as server:
        yield server


def test_calibration_measures_the_mock_truth(tmp_path):
    """The mock emits tokens at exactly 60 ms and 40 ms apart (from when the request arrives): our
    measured medians must sit on that truth; TTFT can only be later, never earlier. How close they
    sit is a benchmark's figure (docs/benchmarks.md, "Load generator accuracy"); here a busy
    machine gets half a token gap of room above the truth, and a reading one token off still fails."""
    result = run_load("--calibrate", "--mock-ttft-ms", "60", "--mock-itl-ms", "40", "--users", "4",
                      "--duration", "4", "--warmup", "0.5", "--output-tokens", "12", "--report-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    doc = report(tmp_path)
    metrics = doc["steps"][0]["metrics"]
    assert metrics["requests_ok"] >= 10 and metrics["requests_failed"] == 0
    assert metrics["output_tokens_mean"] == 12 and metrics["token_count_mismatches"] == 0
    errors = {(r["metric"], r["percentile"]): r["error_ms"] for r in doc["calibration"]["errors"]}
    assert -0.05 <= errors[("ttft", "p50")] < 20.0
    assert abs(errors[("itl", "p50")]) < 20.0
    assert metrics["tpot_ms"]["p50"] == pytest.approx(40.0, abs=20.0)
    assert "calibration 4 users: itl p50" in result.stdout
    for name in ("load.json", "load.csv", "load.html"):
        assert (tmp_path / name).stat().st_size > 0


def test_sweep_non_stream_and_csv(mock_server, tmp_path):
    result = run_load(*target(mock_server), "--no-stream", "--sweep", "1,3", "--duration", "2", "--warmup", "0.2",
                      "--output-tokens", "8", "--report-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    doc = report(tmp_path)
    assert [s["label"] for s in doc["steps"]] == ["1 users", "3 users"]
    for step in doc["steps"]:
        assert step["metrics"]["requests_ok"] > 0 and step["metrics"]["ttft_ms"]["count"] == 0
        assert step["metrics"]["e2e_ms"]["p50"] >= 30.0  # at least the mock's TTFT
    assert doc["steps"][1]["metrics"]["requests_per_s"] > doc["steps"][0]["metrics"]["requests_per_s"]
    rows = list(csv.DictReader((tmp_path / "load.csv").open()))
    assert [r["users"] for r in rows] == ["1", "3"]


def test_missed_slo_exits_1_and_met_slo_exits_0(mock_server, tmp_path):
    common = (*target(mock_server), "--users", "2", "--duration", "2", "--warmup", "0.2", "--output-tokens", "6")
    missed = run_load(*common, "--slo", "ttft_p50=5,itl_p99=1000", "--report-dir", str(tmp_path / "a"))
    assert missed.returncode == 1, missed.stderr
    assert "SLO missed: 2 users ttft_p50" in missed.stderr
    verdicts = {v["objective"]: v["met"] for v in report(tmp_path / "a")["steps"][0]["slo"]}
    assert verdicts == {"ttft_p50": False, "itl_p99": True}
    assert "SLO MISSED" in (tmp_path / "a" / "load.html").read_text()
    met = run_load(*common, "--slo", "ttft_p99=5000", "--report-dir", str(tmp_path / "b"))
    assert met.returncode == 0, met.stderr
    assert report(tmp_path / "b")["steps"][0]["metrics"]["goodput_per_s"] > 0


def test_an_overloaded_client_is_flagged(mock_server, tmp_path):
    """Open loop at 100 requests/s with a pool of 2 users, each busy >= 30 ms a request: the client
    cannot send on schedule. The step did not send what was asked (exit 2, the report says so), and
    the warning blames the client's own pool, whose users were all busy."""
    result = run_load(*target(mock_server), "--rate", "100", "--arrival", "constant", "--users", "2",
                      "--duration", "2", "--warmup", "0.2", "--output-tokens", "4", "--report-dir", str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert "did not send what was asked" in result.stderr and "users were busy" in result.stderr
    step = report(tmp_path)["steps"][0]
    fidelity = step["fidelity"]
    assert not fidelity["ok"] and fidelity["missed"] > 0 and 200 <= fidelity["sent"] + fidelity["missed"] <= 201
    assert step["metrics"]["send_lag_ms"]["p99"] > 100
    assert any(w.startswith("client-limited") and "scheduled time" in w and "raise --users" in w
               for w in step["warnings"])
    assert "warning: client-limited" not in result.stderr  # --quiet
    assert "NOT SENT AS ASKED" in (tmp_path / "load.html").read_text()


def test_open_loop_keeps_its_schedule_when_the_client_keeps_up(mock_server, record, tmp_path):
    mark = record.mark()
    result = run_load(*target(mock_server), "--rate", "20", "--arrival", "poisson", "--users", "64",
                      "--duration", "3", "--warmup", "0.3", "--output-tokens", "4", "--report-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    # The server's record, not the tool's counters: every request of the schedule arrived, on time.
    arrived = load_requests(record.since(mark))
    intended = [line["intended_s"] for line in read_requests(tmp_path / "requests.jsonl")]
    assert len(arrived) == len(intended)
    assert abs(len(intended) - 60) <= 35 and max(intended) > 2.0  # 20/s for 3 s, Poisson: 4.5 sigma
    assert_on_time(match_arrivals([r["arrival_ns"] for r in arrived], intended))


def test_distributed_run_makes_exactly_the_requests_asked(mock_server, record, tmp_path):
    mark = record.mark()
    result = run_load(*target(mock_server), "--workers", "2", "--users", "4", "--max-requests", "25",
                      "--duration", "60", "--warmup", "0", "--output-tokens", "4", "--report-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    arrived = load_requests(record.since(mark))  # what the server received
    assert len(arrived) == 25 and all(r["status"] == 200 and r["body"]["max_tokens"] == 4 for r in arrived)
    assert len({r["client"] for r in arrived}) >= 4  # four users' connections, from two processes
    step = report(tmp_path)["steps"][0]
    assert step["client"]["workers"] == 2
    assert step["fidelity"]["sent"] == 25 and step["fidelity"]["ok"]  # the report's count agrees with the server
    assert step["metrics"]["requests_total"] == 25 and step["metrics"]["requests_ok"] == 25
    assert step["metrics"]["ttft_ms"]["count"] == 25


def test_each_run_sends_fresh_prompts_unless_a_seed_repeats_them(mock_server, record, tmp_path):
    """Two runs with no --seed share no prompt (the server's record says so), so a server's prompt
    cache can never answer the second from the first; each run's seed is in its report, and giving
    it back sends the very same prompts again."""
    def prompts_of_a_run(*extra: str) -> tuple[list[str], int]:
        mark = record.mark()
        out = tmp_path / f"run{mark}"
        # one user: its one random stream makes the run's prompts (two users' shares would vary)
        result = run_load(*target(mock_server), "--users", "1", "--max-requests", "6", "--output-tokens", "2",
                          *extra, "--report-dir", str(out))
        assert result.returncode == 0, result.stderr
        arrived = load_requests(record.since(mark))
        assert len(arrived) == 6
        return sorted(prompt_text(r["body"]) for r in arrived), report(out)["settings"]["seed"]

    first, seed = prompts_of_a_run()
    second, other_seed = prompts_of_a_run()
    assert seed != other_seed and not set(first) & set(second)
    again, same_seed = prompts_of_a_run("--seed", str(seed))
    assert same_seed == seed and again == first


def test_dataset_requests(mock_server, tmp_path):
    dataset = tmp_path / "d.jsonl"
    dataset.write_text('{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}\n'
                       '[{"role": "system", "content": "be brief"}, {"role": "user", "content": "yo"}]\n')
    result = run_load(*target(mock_server), "--dataset", str(dataset), "--users", "1", "--max-requests", "4",
                      "--duration", "30", "--warmup", "0", "--output-tokens", "5",
                      "--extra-body", '{"logit_bias": {"0": -100}}', "--report-dir", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr
    metrics = report(tmp_path / "r")["steps"][0]["metrics"]
    assert metrics["requests_ok"] == 4 and metrics["output_tokens_mean"] == pytest.approx(4.0)  # 3, 5, 3, 5


def test_prompt_length_is_calibrated_from_usage(mock_server, tmp_path):
    result = run_load(*target(mock_server), "--prompt-tokens", "120", "--users", "1", "--max-requests", "3",
                      "--duration", "30", "--warmup", "0", "--output-tokens", "2", "--report-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert report(tmp_path)["steps"][0]["metrics"]["prompt_tokens_mean"] == pytest.approx(120, abs=6)


@pytest.mark.parametrize(("args", "message"), [
    (("--base-url", "http://127.0.0.1:{port}", "--model", "m"), "cannot reach"),
    (("--base-url", "http://127.0.0.1:{port}", "--model", "m", "--slo", "ttft=5"), "--slo: bad SLO"),
    (("--model", "m"), "--base-url is required"),
    (("--base-url", "http://x", "--model", "m", "--sweep", "1,x"), "--sweep: 'x' is not a number"),
    (("--base-url", "http://x", "--model", "m", "--rate", "2", "--users", "0"), "--users must be >= 1"),
    (("--base-url", "http://x", "--model", "m", "--duration", "5", "--warmup", "6"), "--warmup"),
])
def test_cannot_run_exits_2_with_one_line(args, message):
    port = free_port()
    result = run_load(*(a.format(port=port) for a in args), timeout=60)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_wrong_key_is_refused_before_any_load(mock_server, tmp_path):
    result = run_load("--base-url", mock_server.base_url, "--api-key", "wrong", "--model", mock_server.model,
                      "--report-dir", str(tmp_path), timeout=60)
    assert result.returncode == 2 and "HTTP 401" in result.stderr
    assert not (tmp_path / "load.json").exists()


def test_locustfile_runs_in_locust_itself(mock_server, tmp_path):
    env = {**os.environ, "CHATSPEC_API_KEY": mock_server.api_key}
    result = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "load" / "locustfile.py"), "--headless", "-u", "2",
         "-r", "2", "-t", "3s", "--host", mock_server.base_url, "--model", mock_server.model,
         "--output-tokens", "4", "--csv", str(tmp_path / "run"), "--only-summary"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {row["Name"]: row for row in csv.DictReader((tmp_path / "run_stats.csv").open())}
    assert int(rows["chat stream"]["Request Count"]) > 0 and int(rows["chat stream"]["Failure Count"]) == 0
    assert int(rows["first token"]["Request Count"]) > 0
    assert float(rows["first token"]["Median Response Time"]) >= 30
