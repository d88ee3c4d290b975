"""The rules by which a load process takes turns and a step is judged (load.process, load.fidelity),
without Locust or a server: a turn is counted as scheduled when it comes due and as sent only when
its request goes out; a process ends by its count, its schedule or its own clock; a step that sent
less than asked for a reason the user did not choose is not OK. End-to-end proof against what an
endpoint received is in tests/test_load_fidelity.py."""

from __future__ import annotations

import time

import pytest

from load.config import LoadConfig, StepSpec
from load.fidelity import COMPLETE, DRAIN_TIMEOUT, DURATION, INTERRUPTED, ProcessCounts, judge_step, mean_concurrency
from load.fidelity import describe as describe_fidelity
from load.process import ProcessState
from load.records import RequestRecord

S = 1_000_000_000


def process_for(step: StepSpec, schedule_s: list[float] | None = None) -> ProcessState:
    """A configured process at the start of `step`; `schedule_s`: open-loop slot times in seconds."""
    process = ProcessState()
    process.configure(LoadConfig(base_url="http://127.0.0.1:1", model="m"))
    process.begin_step(step)
    if schedule_s is not None:
        process.schedule = iter([(int(t * S), i) for i, t in enumerate(schedule_s)])
    return process


def at(process: ProcessState, seconds: float) -> None:
    """Move the process's clock so that it reads `seconds` into the step now."""
    process.origin_ns = time.perf_counter_ns() - int(seconds * S)


def send(process: ProcessState, count: int = 1) -> None:
    """What a user does when its request goes out and ends (the record is its `done`)."""
    for _ in range(count):
        if process.waiting:
            process.waiting.pop(0)
        process.sent += 1
        process.add_record(RequestRecord(send_ns=process.now_ns(), stream=True, end_ns=process.now_ns(),
                                         status=200, usage_completion=3))


def test_closed_loop_takes_its_count_and_finishes_only_when_every_turn_was_sent_and_ended():
    process = process_for(StepSpec(0, users=2, duration_s=60, warmup_s=0, max_requests=3))
    assert [process.claim() for _ in range(3)] == [(None, None)] * 3
    assert process.claim() is None and process.ended_by == "count"
    assert not process.finished()  # three turns taken, none sent: the step must wait for them
    send(process, 2)
    process.inflight = 1
    assert not process.finished()
    send(process)
    process.inflight = 0
    assert process.finished()
    counts = process.counts()
    assert (counts.scheduled, counts.sent, counts.done, counts.missed) == (3, 3, 3, 0)
    status = process.status()
    assert (status["done"], status["failed"], status["tokens"]) == (3, 0, 9)


def test_a_trace_with_idle_gaps_is_due_slot_by_slot_and_ends_with_its_last_slot():
    process = process_for(StepSpec(0, users=8, duration_s=60, warmup_s=0), schedule_s=[0.0, 0.1, 5.0, 5.1, 12.0])
    at(process, 0.0)
    taken = [process.claim() for _ in range(5)]
    assert [slot for _, slot in taken] == [0, 1, 2, 3, 4]  # users take slots ahead of their time
    assert process.claim() is None and process.ended_by == "schedule"
    at(process, 0.2)
    assert process.status()["scheduled"] == 2 and not process.finished()  # 3 slots not yet due
    send(process, 2)
    at(process, 6.0)
    assert process.status()["scheduled"] == 4 and not process.finished()
    send(process, 2)
    at(process, 12.5)
    send(process)
    assert process.finished() and process.counts().scheduled == 5


def test_open_loop_slots_past_the_duration_are_not_taken_and_busy_users_miss_due_ones():
    process = process_for(StepSpec(0, users=1, duration_s=2, warmup_s=0, rate=1.0),
                          schedule_s=[0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    at(process, 0.0)
    assert process.claim() == (0, 0)
    send(process)
    at(process, 1.2)  # the only user was busy: slots 0.5 and 1.0 are overdue when it comes back
    assert process.claim() == (int(0.5 * S), 1) and process.late_claims == 1
    send(process)
    at(process, 2.1)  # the duration passed: no turn is taken, and 1.0 and 1.5 came due unsent
    assert process.claim() is None and process.ended_by == "duration"
    counts = process.counts()
    assert (counts.scheduled, counts.missed, counts.sent) == (2, 2, 2)


def test_the_next_slot_after_the_duration_ends_the_process_before_its_time():
    process = process_for(StepSpec(0, users=4, duration_s=10, warmup_s=0, rate=0.1), schedule_s=[0.0, 30.0])
    at(process, 0.0)
    assert process.claim() is not None and process.claim() is None and process.ended_by == "duration"
    send(process)
    assert process.finished() and process.counts().missed == 0


def test_a_stopped_process_sends_nothing_more_and_its_slots_not_yet_due_are_not_counted():
    process = process_for(StepSpec(0, users=4, duration_s=60, warmup_s=0), schedule_s=[0.0, 1.0, 30.0])
    at(process, 0.0)
    assert all(process.claim() is not None for _ in range(3))
    send(process)
    at(process, 2.0)
    process.stop()
    assert process.claim() is None and process.finished()
    counts = process.counts()
    assert (counts.scheduled, counts.sent) == (2, 1)  # the 1.0 slot came due, unsent; 30.0 never did


def test_workers_split_the_count_exactly():
    shares = []
    for index in range(3):
        process = ProcessState()
        process.configure(LoadConfig(base_url="http://127.0.0.1:1", model="m"), worker_index=index, workers=3)
        process.begin_step(StepSpec(0, users=3, duration_s=60, warmup_s=0, max_requests=10))
        taken = 0
        while process.claim() is not None:
            taken += 1
        shares.append(taken)
    assert sorted(shares) == [3, 3, 4] and sum(shares) == 10


def records_at(*spans_s: tuple[float, float]) -> list[RequestRecord]:
    return [RequestRecord(send_ns=int(a * S), stream=True, end_ns=int(b * S), status=200) for a, b in spans_s]


def judged(end: str, counts: list[ProcessCounts], records: list[RequestRecord], asked: int | None = None,
           users: int = 4):
    return judge_step(asked=asked, asked_rate=None, users=users, counts=counts, records=records, end=end,
                      end_detail=end, window_start_ns=0, window_end_ns=10 * S)


def test_a_step_that_sent_its_whole_count_is_ok_and_one_that_stopped_short_is_not():
    records = records_at((0, 1), (1, 2), (2, 3))
    ok = judged(COMPLETE, [ProcessCounts(scheduled=3, sent=3, done=3, ended_by="count")], records, asked=3)
    assert ok.ok and ok.problems == []
    assert describe_fidelity(ok)[0].startswith("3 asked, 3 scheduled, 3 sent, 3 done; ended: complete")
    short = judged(COMPLETE, [ProcessCounts(scheduled=3, sent=3, done=3, ended_by="count")], records, asked=40)
    assert not short.ok and "40 requests were asked for but 3 were sent" in short.problems[0]
    unsent = judged(COMPLETE, [ProcessCounts(scheduled=5, sent=3, done=3, ended_by="schedule")], records)
    assert not unsent.ok and "2 requests were scheduled but never sent" in unsent.problems


def test_the_users_choices_excuse_a_short_step_but_busy_users_and_lost_requests_do_not():
    records = records_at((0, 1))
    assert judged(DURATION, [ProcessCounts(scheduled=1, sent=1, done=1)], records, asked=40).ok
    assert judged(INTERRUPTED, [ProcessCounts(scheduled=5, sent=1, done=1)], records, asked=40).ok
    missed = judged(DURATION, [ProcessCounts(scheduled=1, missed=7, sent=1, done=1)], records, users=2)
    assert not missed.ok and missed.scheduled == 8 and "all 2 users were busy" in missed.problems[0]
    lost = judged(DURATION, [ProcessCounts(scheduled=2, sent=2, done=1)], records)
    assert not lost.ok and "1 requests were sent but never ended" in lost.problems[0]
    # requests cut off after the drain are failed records (kind cut_off), not requests left unsent
    assert judged(DRAIN_TIMEOUT, [ProcessCounts(scheduled=1, sent=1, done=1)], records).ok


def test_achieved_rate_and_concurrency_come_from_the_records():
    evenly = records_at(*[(i * 0.5, i * 0.5 + 0.25) for i in range(11)])  # 2/s, each 0.25 s long
    fidelity = judged(COMPLETE, [ProcessCounts(scheduled=11, sent=11, done=11)], evenly, asked=11)
    assert fidelity.achieved_rate == pytest.approx(2.0)
    assert mean_concurrency(evenly, 0, 5 * S + S // 4) == pytest.approx(11 * 0.25 / 5.25)
    assert mean_concurrency(records_at((0, 20)), 0, 10 * S) == pytest.approx(1.0)  # clipped to the window
    over_duration = judged(DURATION, [ProcessCounts(scheduled=11, sent=11, done=11)], evenly)
    assert over_duration.achieved_rate == pytest.approx(11 / 10)  # sent in the window / its length


def test_constant_arrivals_over_workers_interleave_into_one_even_schedule():
    slots = []
    for index in range(3):
        process = ProcessState()
        process.configure(LoadConfig(base_url="http://127.0.0.1:1", model="m"), worker_index=index, workers=3)
        process.begin_step(StepSpec(0, users=3, duration_s=60, warmup_s=0, rate=30.0, arrival="constant",
                                    max_requests=30))
        slots += [process.claim()[0] for _ in range(10)]
    gaps = [b - a for a, b in zip(sorted(slots), sorted(slots)[1:], strict=False)]
    assert len(slots) == 30 and all(abs(gap - S / 30) < 1000 for gap in gaps)  # every 1/30 s, none together
