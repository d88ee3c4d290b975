"""`python -m load --find-capacity` against the mock with a computable capacity, with the server's
/metrics scraped on the way, requests.jsonl written, and `python -m load compare` on the result.

The mock has 2 generation slots, TTFT 10 ms and 40 ms between tokens (6 tokens: a slot is busy
S = 210 ms a request). Up to 2 closed-loop users, nobody waits: TTFT ~10 ms. At 3 users every
request waits for a slot, by turns d and S - d (d: how far apart the two slots end), so half of
them wait at least S / 2 = 105 ms. With the objective TTFT p90 <= 80 ms the capacity is exactly
2 users: at 2 users 70 ms of room, and a busy machine's stalls may hit 1 request in 10 before
the verdict moves (a p99 over ~40 requests is their maximum: one stall would do); at 3 users
the p90 is among the waits of at least S / 2, which a busy machine only lengthens. At 4 users
every request waits about S (TTFT ~220 ms, past twice the objective), so that step is stopped
early. In open loop the same server answers at most 2 / 0.21 s = 9.5 requests/s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reference_server.launcher import running_server

ROOT = Path(__file__).resolve().parent.parent
SIX_TOKENS = ("--output-tokens", "6", "--extra-body", '{"logit_bias": {"0": -100}}')


@pytest.fixture(scope="module")
def two_slots():
    with running_server("--ttft-ms", "10", "--itl-ms", "40", "--mock-slots", "2", "--max-queue", "1000",
                        engine="mock") as server:
        yield server


def search(server, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "load", "--quiet", "--base-url", server.base_url, "--api-key", server.api_key,
         "--model", server.model, "--find-capacity", *SIX_TOKENS, "--warmup", "0.5", "--report-dir", str(out),
         *args], capture_output=True, text=True, timeout=180, cwd=ROOT)


def test_capacity_search_finds_the_mock_slots(two_slots, tmp_path):
    out = tmp_path / "run"
    result = search(two_slots, out, "--slo", "ttft_p90=80,error_rate=0.01", "--duration", "4",
                    "--capacity-max-steps", "6", "--scrape-metrics", "/metrics")
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads((out / "load.json").read_text())
    capacity = doc["capacity"]
    assert capacity["capacity"] == 2 and capacity["first_failing"] == 3, capacity
    assert [p["level"] for p in capacity["probes"]] == [1, 2, 4, 3]
    assert capacity["probes"][2]["stopped_early"].startswith("saturated: TTFT p90")
    assert {m["objective"] for m in capacity["margin"]} == {"ttft_p90", "error_rate"}
    assert "capacity: 2 users" in result.stdout
    html = (out / "load.html").read_text()
    assert "CAPACITY 2 users" in html and 'id="probes"' in html and "4 users over time" in html

    waiting = {s["label"]: s["server"]["series"]["num_requests_waiting"] for s in doc["steps"]}
    assert max(waiting["4 users"]) >= 2 and max(waiting["1 users"]) <= 1  # 2 always wait for a slot at 4 users
    assert doc["server_metrics"]["failures"] == 0

    lines = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert len(lines) == sum(s["metrics"]["requests_total"] for s in doc["steps"])
    assert all(line["request_id"].startswith("chatcmpl-") and len(line["token_ms"]) == 6 for line in lines)

    compared = subprocess.run([sys.executable, "-m", "load", "compare", str(out), str(out), "--fail-if-worse", "5",
                               "--resamples", "100", "--report-dir", str(tmp_path / "cmp")],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert compared.returncode == 0, compared.stderr
    assert (tmp_path / "cmp" / "compare.html").is_file()
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"]
    capacity_row = next(row for row in rows if row["metric"] == "capacity")
    assert [cell["value"] for cell in capacity_row["runs"]] == [2, 2] and capacity_row["runs"][1]["delta"] == 0


def test_runs_that_cannot_be_made_exit_2_with_one_line():
    from reference_server.launcher import free_port

    def load(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "load", "--quiet", *args], capture_output=True, text=True,
                              timeout=120, cwd=ROOT)

    no_slo = load("--base-url", "http://127.0.0.1:1", "--model", "m", "--find-capacity")
    assert no_slo.returncode == 2 and "--find-capacity needs --slo" in no_slo.stderr
    swept = load("--base-url", "http://127.0.0.1:1", "--model", "m", "--find-capacity", "--slo", "ttft_p99=9",
                 "--sweep", "1,2")
    assert swept.returncode == 2 and "leave out --sweep" in swept.stderr
    with running_server(engine="mock", api_key=None) as server:
        unreachable = load("--base-url", server.base_url, "--model", server.model, "--duration", "1",
                           "--scrape-metrics", f"http://127.0.0.1:{free_port()}/metrics")
    assert unreachable.returncode == 2 and "--scrape-metrics: cannot scrape" in unreachable.stderr
    assert len(unreachable.stderr.strip().splitlines()) == 1


def test_open_loop_search_stays_under_the_servers_throughput(two_slots, tmp_path):
    """Rates 2, 4, 8, 16 (past 9.5/s: unsustainable), then bisecting to within 20%: the answer
    is one the server can hold, however lenient the latency objective."""
    result = search(two_slots, tmp_path, "--rate", "2", "--arrival", "constant", "--slo", "e2e_p99=5000",
                    "--duration", "3", "--capacity-tolerance", "0.2", "--capacity-max-steps", "8")
    assert result.returncode == 0, result.stderr[-3000:]
    capacity = json.loads((tmp_path / "load.json").read_text())["capacity"]
    assert capacity["mode"] == "rate" and 7.5 <= capacity["capacity"] <= 9.5 * 1.1, capacity
    assert [p["level"] for p in capacity["probes"]][:4] == [2, 4, 8, 16]
    assert not capacity["probes"][3]["passed"]
