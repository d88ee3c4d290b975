"""Sub-millisecond deadlines for asyncio code.

asyncio waits in epoll, whose timeout has millisecond granularity and is rounded up, so
`asyncio.sleep` lands up to ~1 ms late and, chained, the lateness drifts. The mock engine's
token times are the ground truth load generators are calibrated against, so it waits here
instead: one thread sleeps on a condition variable (nanosecond timeouts) until the earliest
deadline and wakes the event loop through `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import sys
import threading
import time

# While a token is due, the timer thread needs the GIL at once; Python's default 5 ms switch
# interval would let a busy event loop hold it that long.
SWITCH_INTERVAL_S = 0.005


class DeadlineTimer:
    """`await timer.sleep_until(t)` with `t` on the `time.monotonic()` clock (asyncio's clock)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= time.monotonic():
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="deadline-timer", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (deadline, next(self._order), loop, future))
            self._cond.notify()
        await future

    def _run(self) -> None:
        with self._cond:
            while True:
                if not self._heap:
                    self._cond.wait()
                    continue
                delay = self._heap[0][0] - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                _, _, loop, future = heapq.heappop(self._heap)
                try:
                    loop.call_soon_threadsafe(_wake, future)
                except RuntimeError:  # that loop is closed: nobody waits any more
                    pass


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
