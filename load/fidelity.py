"""Did the step send what was asked, when it was asked? Counts kept apart and judged.

A load tool whose own counters say "sent 120" while the endpoint received 22 is the worst defect
it can have. So each process counts, separately: turns `scheduled` (a closed-loop user's turn, or
an open-loop slot that came due), `sent` (the request's bytes went out) and `done` (the request
ended, answered or failed); slots that came due while every user was busy are `missed`. The step's
verdict compares them with what was asked (`--max-requests`, a trace's rows, a rate x a duration)
and says why the step ended. Kept free of Locust and gevent, so reports and tests can use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from load.records import RequestRecord

# Why a step ended, in the words the reports use.
COMPLETE = "complete"  # its schedule or request count was used up and every sent request ended
DURATION = "duration"  # --duration passed (then every sent request ended or was cut off)
INTERRUPTED = "interrupted"  # Ctrl-C
GONE = "endpoint gone"  # the endpoint stopped answering
STOPPED_EARLY = "stopped early"  # a capacity search ended a clearly saturated step
# Requests still in flight when the wait for them (--timeout after --duration) ran out: they are cut
# off, each a failed request of kind cut_off; everything asked was sent, so this alone is no problem.
DRAIN_TIMEOUT = "drain timeout"
# Ends the user chose: a step cut short by one of them has not failed to send what was asked.
CHOSEN_ENDS = (DURATION, INTERRUPTED, STOPPED_EARLY)


@dataclass(frozen=True)
class ProcessCounts:
    """One load process's counts for one step (what travels from a worker to the master)."""

    worker: int = 0
    scheduled: int = 0  # turns taken: a closed-loop user's turn, an open-loop slot a user took
    missed: int = 0  # open-loop slots that came due before the step's end and no user took
    sent: int = 0  # requests whose bytes went out
    done: int = 0  # requests that ended (answered or failed): the records
    late_claims: int = 0  # open-loop slots a user took only after their time (every user was busy)
    ended_by: str | None = None  # "count", "schedule" or "duration": why this process took no more turns

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ProcessCounts:
        return cls(**data)


@dataclass(frozen=True)
class StepFidelity:
    """What a step was asked to send beside what it scheduled, sent and finished, and the verdict."""

    asked: int | None  # requests asked for (--max-requests, a trace's rows); None: as many as fit
    asked_rate: float | None  # open loop: requests/s asked (a trace: its rows over its span)
    users: int  # --users: closed-loop concurrency, or the open-loop pool
    scheduled: int  # turns that came due (taken or missed)
    missed: int  # of those, due while every user was busy, never sent
    sent: int
    done: int
    late_claims: int
    end: str  # why the step ended (COMPLETE, DURATION, ...)
    end_detail: str  # the same in a sentence
    window_s: float
    sent_in_window: int
    achieved_rate: float  # the rate requests went out at (see `sent_rate`)
    mean_concurrency: float  # requests in flight, time-weighted mean over the window
    problems: list[str] = field(default_factory=list)  # why the step is not OK; empty: it is

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_wire(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> StepFidelity:
        """The inverse of `to_wire()` (`ok` is recomputed from the problems)."""
        return cls(**{key: value for key, value in data.items() if key != "ok"})


def mean_concurrency(records: Sequence[RequestRecord], start_ns: int, end_ns: int) -> float:
    """Requests in flight, time-weighted mean over [start_ns, end_ns): each request counts from its
    send to its end (one still open counts to end_ns)."""
    length = end_ns - start_ns
    if length <= 0:
        return 0.0
    busy = 0
    for record in records:
        end = record.end_ns if record.end_ns is not None else end_ns
        busy += max(0, min(end, end_ns) - max(record.send_ns, start_ns))
    return busy / length


def sent_rate(sends_ns: Sequence[int], window_s: float, complete: bool) -> float:
    """Requests/s sent: over the window while sending lasted all of it (a duration); for a step that
    sent its whole count, the gaps between its first and last send ((n - 1) / span), which is exactly
    the rate of evenly spaced sends and is not diluted by the wait for the last answers."""
    if complete and len(sends_ns) >= 2 and sends_ns[-1] > sends_ns[0]:
        return (len(sends_ns) - 1) / ((sends_ns[-1] - sends_ns[0]) / 1e9)
    return len(sends_ns) / window_s


def judge_step(
    *,
    asked: int | None,
    asked_rate: float | None,
    users: int,
    counts: Sequence[ProcessCounts],
    records: Sequence[RequestRecord],
    end: str,
    end_detail: str,
    window_start_ns: int,
    window_end_ns: int,
    lost: Sequence[str] = (),
) -> StepFidelity:
    """The step's fidelity: its counts summed over processes, and every way it fell short of the ask
    for a reason the user did not choose (those are `problems`; the step is OK without any).
    `lost`: why each worker that vanished mid-step is gone (its share was not all sent or counted)."""
    scheduled = sum(c.scheduled for c in counts) + sum(c.missed for c in counts)
    missed = sum(c.missed for c in counts)
    sent = sum(c.sent for c in counts)
    done = len(records)
    late = sum(c.late_claims for c in counts)
    seconds = max(window_end_ns - window_start_ns, 1) / 1e9
    sends = sorted(r.send_ns for r in records if window_start_ns <= r.send_ns < window_end_ns)
    in_window = len(sends)
    problems = []
    chosen = end in CHOSEN_ENDS
    if missed and end not in (INTERRUPTED, STOPPED_EARLY):
        problems.append(f"{missed} requests came due while all {users} users were busy and were never sent "
                        "(raise --users)")
    unsent = scheduled - missed - sent
    if unsent and not chosen and end != GONE:
        problems.append(f"{unsent} requests were scheduled but never sent")
    if sent != done and end != INTERRUPTED:
        problems.append(f"{sent - done} requests were sent but never ended with a record")
    if end != INTERRUPTED:
        problems += [f"{why}; its share of the step was not all sent or counted" for why in lost]
    if asked is not None and end == COMPLETE and sent != asked:
        problems.append(f"{asked} requests were asked for but {sent} were sent")
    return StepFidelity(asked=asked, asked_rate=asked_rate, users=users, scheduled=scheduled, missed=missed,
                        sent=sent, done=done, late_claims=late, end=end, end_detail=end_detail, window_s=seconds,
                        sent_in_window=in_window, achieved_rate=sent_rate(sends, seconds, end == COMPLETE),
                        mean_concurrency=mean_concurrency(records, window_start_ns, window_end_ns),
                        problems=problems)


def describe(fidelity: StepFidelity) -> list[str]:
    """Two lines from a step's fidelity: what was asked beside what was scheduled, sent and done, why
    the step ended and the verdict; the rates and concurrency."""
    asked = "" if fidelity.asked is None else f"{fidelity.asked} asked, "
    missed = f" ({fidelity.missed} missed: every user busy)" if fidelity.missed else ""
    rate = (f"rate {fidelity.achieved_rate:.3g}/s sent of {fidelity.asked_rate:.3g}/s asked"
            if fidelity.asked_rate is not None else f"rate {fidelity.achieved_rate:.3g}/s sent")
    verdict = "sent as asked" if fidelity.ok else "NOT SENT AS ASKED: " + "; ".join(fidelity.problems)
    return [f"{asked}{fidelity.scheduled} scheduled{missed}, {fidelity.sent} sent, {fidelity.done} done; "
            f"ended: {fidelity.end}; {verdict}",
            f"{rate}, mean in flight {fidelity.mean_concurrency:.2f} of {fidelity.users} users"]
