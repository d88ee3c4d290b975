"""The mock engine's timing is the ground truth load generators are calibrated against: tokens on
deadlines counted from the request's arrival, never early, and the deadline timer behind them.

Which deadline each token is given is exact, so it is checked exactly (the timer replaced by one
that records what it is asked for). Real time is checked only where it cannot depend on the
machine's speed: never early, in deadline order; how late tokens come is a benchmark's figure
(docs/benchmarks.md, "Load generator accuracy against the mock engine"), so the upper bounds here
only say "it wakes".
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from reference_server.engines.base import SamplingParams
from reference_server.engines.mock import MockEngine
from reference_server.engines.timer import DeadlineTimer

NO_EOS = SamplingParams(max_tokens=5, logit_bias={0: -100})
WAKES = 0.5  # s: "it wakes", not a precision target


class RecordingTimer:
    """The deadline timer's seam: records each deadline asked for and returns at once."""

    def __init__(self) -> None:
        self.deadlines: list[float] = []

    async def sleep_until(self, deadline: float) -> None:
        self.deadlines.append(deadline)


async def token_times(engine: MockEngine, origin: float, started: float | None = None) -> list[float]:
    loop = asyncio.get_running_loop()
    return [loop.time() - origin async for _ in engine.stream([1, 2], NO_EOS, threading.Event(), started)]


def asked_deadlines(started: float | None, choices: int = 1) -> tuple[list[list[float]], float, float]:
    """The deadlines a 5-token answer of `choices` choices asks for (TTFT 50 ms, 10 ms apart), one
    list per choice, and the loop's time before and after."""
    async def main() -> tuple[list[list[float]], float, float]:
        loop, engine = asyncio.get_running_loop(), MockEngine(ttft_ms=50, itl_ms=10)
        before, asked = loop.time(), []
        for _ in range(choices):
            engine._timer = timer = RecordingTimer()  # type: ignore[assignment]
            tokens = [token async for token in engine.stream([1, 2], NO_EOS, threading.Event(), started)]
            assert len(tokens) == 5
            asked.append(timer.deadlines)
        return asked, before, loop.time()

    return asyncio.run(main())


def test_each_token_is_due_at_arrival_plus_ttft_plus_its_gaps() -> None:
    (deadlines,), _, _ = asked_deadlines(started=1000.0)
    assert deadlines == pytest.approx([1000.050, 1000.060, 1000.070, 1000.080, 1000.090], abs=1e-9)


def test_every_choice_counts_from_the_request_arrival_and_no_arrival_means_the_call() -> None:
    choices, _, _ = asked_deadlines(started=1000.0, choices=2)
    assert choices[0] == choices[1] and choices[0][0] == pytest.approx(1000.050, abs=1e-9)
    (unstamped,), before, after = asked_deadlines(started=None)
    assert before + 0.050 <= unstamped[0] <= after + 0.050  # TTFT from the call
    assert [b - a for a, b in zip(unstamped, unstamped[1:], strict=False)] == pytest.approx([0.010] * 4, abs=1e-9)


def test_tokens_come_on_their_deadlines_never_early() -> None:
    async def main() -> list[float]:
        return await token_times(MockEngine(ttft_ms=40, itl_ms=10), asyncio.get_running_loop().time())

    times = asyncio.run(main())
    assert len(times) == 5
    for k, t in enumerate(times):
        due = 0.040 + 0.010 * k
        assert due - 1e-4 <= t < due + WAKES, (k, t)


def test_ttft_counts_from_the_request_arrival_for_every_choice() -> None:
    async def main() -> tuple[list[float], list[float], list[float]]:
        loop = asyncio.get_running_loop()
        arrived = loop.time() - 0.030  # the handler started 30 ms ago (validation, queueing...)
        engine = MockEngine(ttft_ms=50, itl_ms=5)
        # The n choices of a request run at once, each timed from the request's arrival.
        first, second = await asyncio.gather(token_times(engine, arrived, arrived), token_times(engine, arrived,
                                                                                                arrived))
        unstamped_start = loop.time()
        unstamped = await token_times(engine, unstamped_start)  # no arrival given: from the call
        return first, second, unstamped

    first, second, unstamped = asyncio.run(main())
    assert 0.050 - 1e-4 <= first[0] < 0.050 + WAKES  # 50 ms after arrival, i.e. 20 ms after the call
    assert 0.050 - 1e-4 <= second[0] < 0.050 + WAKES
    assert 0.050 - 1e-4 <= unstamped[0] < 0.050 + WAKES


def test_deadline_timer_wakes_in_deadline_order_and_not_before() -> None:
    async def main() -> list[tuple[str, float]]:
        timer, woke = DeadlineTimer(), []
        base = time.monotonic()

        async def wait(name: str, offset: float) -> None:
            await timer.sleep_until(base + offset)
            woke.append((name, time.monotonic() - base))

        await asyncio.gather(wait("late", 0.030), wait("early", 0.010), wait("past", -1.0))
        return woke

    woke = asyncio.run(main())
    assert [name for name, _ in woke] == ["past", "early", "late"]
    assert 0.010 <= woke[1][1] < 0.010 + WAKES and 0.030 <= woke[2][1] < 0.030 + WAKES
