"""benchmarks/batching_vs_peers.py's ratio table: cells run in several rounds are judged by the
median over pairs of rounds run in both orders, not by one lucky or unlucky round, nor by which
server happened to go first more often."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.batching_vs_peers import main, one_per, ratio_table  # noqa: E402


def row(prompt: int, level: int, round_: int, tok_s: float, ttft: float | None, itl: float) -> dict:
    return {"prompt_tokens": prompt, "level": level, "round": round_, "tok_s": tok_s, "ttft_p50": ttft,
            "itl_p50": itl, "prompt_tokens_mean": 41.0}


def cells(table: str) -> dict[str, list[str]]:
    """The table's data rows by their first two cells ("32 (41) x 1")."""
    rows = {}
    for line in table.splitlines()[2:]:
        parts = [part.strip() for part in line.strip("|").split("|")]
        rows[f"{parts[0]} x {parts[1]}"] = parts[2:]
    return rows


def test_rounds_are_paired_in_both_orders_and_the_median_pair_decides() -> None:
    # Rounds 0 and 2 had ours first, 1 and 3 the peer first; the second place is 10% faster for both.
    # Ours is 5% ahead in truth: per round 1.05 * 1.1 or 1.05 / 1.1; round 2 also ran while the machine
    # was slow for ours only.
    ours = [row(32, 1, 0, 60, 100, 12.0), row(32, 1, 1, 60, 86.6, 12.0), row(32, 1, 2, 60, 150, 12.0),
            row(32, 1, 3, 60, 86.6, 12.0)]
    peer = [row(32, 1, 0, 60, 86.6, 12.0), row(32, 1, 1, 60, 100, 12.0), row(32, 1, 2, 60, 86.6, 12.0),
            row(32, 1, 3, 60, 100, 12.0)]
    rounds, tok, tok_ratio, ttft, ttft_ratio, itl, itl_ratio = cells(ratio_table(ours, peer, "peer"))["32 (41) x 1"]
    assert rounds == "4"
    assert tok == "60.0 / 60.0" and ttft == "93.3 / 93.3" and itl == "12.0 / 12.0"  # medians of each server
    # pairs (0, 1) and (2, 3): sqrt(1.155 * 0.866) = 1.00 and sqrt(1.732 * 0.866) = 1.22; their median
    assert ttft_ratio == "**1.11 (1.00-1.22)**"
    assert tok_ratio == "1.00 (1.00-1.00)" and itl_ratio == "1.00 (1.00-1.00)"


def test_a_round_without_its_pair_is_left_out_and_said_so() -> None:
    ours = [row(32, 1, 0, 60, 100, 12.0), row(32, 1, 1, 60, 80, 12.0), row(32, 1, 2, 30, 200, 24.0)]
    peer = [row(32, 1, 0, 60, 80, 12.0), row(32, 1, 1, 60, 100, 12.0), row(32, 1, 2, 60, 100, 12.0)]
    rounds, _, tok_ratio, _, ttft_ratio, _, _ = cells(ratio_table(ours, peer, "peer"))["32 (41) x 1"]
    assert rounds == "3 (2 paired)" and tok_ratio == "1.00" and ttft_ratio == "1.00"


def test_a_cell_behind_is_bold_and_a_missing_figure_is_a_dash() -> None:
    ours = [row(256, 4, 0, 30, None, 40.0)]
    peer = [row(256, 4, 0, 40, 2000, 35.0), row(1024, 1, 0, 9, 4000, 20.0)]
    table = cells(ratio_table(ours, peer, "peer"))
    assert list(table) == ["256 (41) x 4"]  # a cell only one server ran is left out
    rounds, _, tok_ratio, ttft, ttft_ratio, _, itl_ratio = table["256 (41) x 4"]
    assert rounds == "1" and tok_ratio == "**0.75**" and itl_ratio == "**1.14**"
    assert ttft == "- / 2000.0" and ttft_ratio == "-"


def test_rounds_take_one_value_or_one_per_level() -> None:
    assert one_per("5,3,1,1", [1, 4, 8, 16], "--rounds", of="levels") == {1: 5, 4: 3, 8: 1, 16: 1}
    assert one_per("2", [1, 4], "--rounds", of="levels") == {1: 2, 4: 2}
    with pytest.raises(SystemExit, match="--rounds gives 2 values for 4 levels"):
        one_per("5,3", [1, 4, 8, 16], "--rounds", of="levels")


@pytest.mark.parametrize(("argv", "message"), [
    (["--rounds", "4"], "--rounds needs cells sized by requests"),  # duration steps cannot be paired
    (["--rounds", "0", "--requests-per-stream", "2"], "--rounds takes counts of 1 or more"),
    (["--rounds", "3", "--requests-per-stream", "2"], "--rounds above 1 must be even"),
])
def test_rounds_that_cannot_run_stop_before_any_server_starts(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--levels", "1", "--servers", "chatspec", *argv])
    assert stopped.value.code == 2 and message in capsys.readouterr().err
