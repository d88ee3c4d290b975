"""tests/oracle.py, the reading of a --record file: clock alignment, lateness, requests in flight."""

from __future__ import annotations

import json

import pytest
from oracle import gaps_s, in_flight, load_requests, match_arrivals, percentile, prompt_text, read_records

S = 1_000_000_000


def test_arrivals_align_on_the_earliest_and_a_late_or_missing_request_shows():
    base = 1_700_000_000 * S
    intended = [0.0, 0.5, 1.0, 1.5]
    on_time = match_arrivals([base + int(t * S) + 2_000_000 for t in intended], intended)
    assert on_time.offset_ns == base + 2_000_000 and on_time.max_s == pytest.approx(0.0)
    late = match_arrivals([base, base + S // 2, base + 3 * S, base + 3 * S // 2], intended)
    assert late.max_s == pytest.approx(1.5) and late.p90_s == pytest.approx(1.5)  # sorted: 0, .5, 1.5, 3
    with pytest.raises(ValueError, match="3 arrivals for 4"):
        match_arrivals([base, base + S, base + 2 * S], intended)


def test_in_flight_is_time_weighted():
    records = [{"arrival_ns": 0, "end_ns": 10}, {"arrival_ns": 5, "end_ns": 15}, {"arrival_ns": 15, "end_ns": 20}]
    seen = in_flight(records, 0, 20, above=1)
    assert seen.mean == pytest.approx((10 + 10 + 5) / 20) and seen.max == 2 and seen.above_share == pytest.approx(0.25)
    assert in_flight(records, 12, 20).max == 1  # back to back (15): never two at once


def test_records_are_read_in_arrival_order_and_load_requests_are_the_streamed(tmp_path):
    path = tmp_path / "r.jsonl"
    lines = [{"arrival_ns": 3, "body": {"stream": True, "messages": [{"role": "user", "content": "b"}]}},
             {"arrival_ns": 1, "body": {"max_tokens": 1, "messages": [{"role": "user", "content": "ping"}]}},
             {"arrival_ns": 2, "body": "not json"}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    records = read_records(path, settle_s=0.05)
    assert [r["arrival_ns"] for r in records] == [1, 2, 3]
    assert [prompt_text(r["body"]) for r in load_requests(records)] == ["b"]
    assert read_records(tmp_path / "absent.jsonl", settle_s=0.05, timeout_s=0.2) == []


def test_percentile_and_gaps():
    assert percentile([5, 1, 3, 2, 4], 90) == 5 and percentile([5, 1, 3, 2, 4], 50) == 3
    assert gaps_s([3 * S, S, 2 * S]) == [1.0, 1.0]
