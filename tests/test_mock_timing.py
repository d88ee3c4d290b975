"""The mock engine's timing is the ground truth load generators are calibrated against: tokens on
deadlines counted from the request's arrival, never early, and the deadline timer behind them."""

from __future__ import annotations

import asyncio
import threading
import time

from reference_server.engines.base import SamplingParams
from reference_server.engines.mock import MockEngine
from reference_server.engines.timer import DeadlineTimer

NO_EOS = SamplingParams(max_tokens=5, logit_bias={0: -100})


async def token_times(engine: MockEngine, origin: float, started: float | None = None) -> list[float]:
    loop = asyncio.get_running_loop()
    return [loop.time() - origin async for _ in engine.stream([1, 2], NO_EOS, threading.Event(), started)]


def test_tokens_come_on_their_deadlines_never_early() -> None:
    async def main() -> list[float]:
        return await token_times(MockEngine(ttft_ms=40, itl_ms=10), asyncio.get_running_loop().time())

    times = asyncio.run(main())
    assert len(times) == 5
    for k, t in enumerate(times):
        due = 0.040 + 0.010 * k
        assert due - 1e-4 <= t < due + 0.020, (k, t)  # late only by scheduling noise


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
    assert 0.050 - 1e-4 <= first[0] < 0.070  # 50 ms after arrival, i.e. 20 ms after the call
    assert 0.050 - 1e-4 <= second[0] < 0.070
    assert 0.050 - 1e-4 <= unstamped[0] < 0.070


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
    assert 0.010 <= woke[1][1] < 0.025 and 0.030 <= woke[2][1] < 0.045
