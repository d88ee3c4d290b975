"""The llama.cpp scheduler's outbox: what a step produced reaches each sequence's queue, in order,
only once flushed, with one wake-up per event loop, and never stalls on a loop that closed."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("llama_cpp")

from reference_server.engines.llamacpp_batch import Consumer, Outbox  # noqa: E402


@pytest.fixture()
def outbox() -> Iterator[Outbox]:
    box = Outbox()
    yield box
    box.close()


class CountingLoop:
    """An event loop running in a thread of its own, counting the `call_soon_threadsafe` calls that
    come from other threads than the test's (its own helpers below use that call too)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.wakeups = 0
        real = self.loop.call_soon_threadsafe
        test_thread = threading.current_thread()

        def counted(callback: Any, *args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is not test_thread:
                self.wakeups += 1
            return real(callback, *args, **kwargs)

        self.loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def consumer(self) -> Consumer:
        async def make() -> asyncio.Queue[Any]:
            return asyncio.Queue()

        return Consumer(self.loop, asyncio.run_coroutine_threadsafe(make(), self.loop).result(5))

    def drain(self, consumer: Consumer, count: int) -> list[Any]:
        async def take() -> list[Any]:
            return [await asyncio.wait_for(consumer.queue.get(), 5) for _ in range(count)]

        return asyncio.run_coroutine_threadsafe(take(), self.loop).result(10)

    def size(self, consumer: Consumer) -> int:
        async def size() -> int:
            return consumer.queue.qsize()

        return asyncio.run_coroutine_threadsafe(size(), self.loop).result(5)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture()
def loops() -> Iterator[list[CountingLoop]]:
    made = [CountingLoop(), CountingLoop()]
    yield made
    for loop in made:
        if not loop.loop.is_closed():
            loop.stop()


def test_items_reach_their_queues_in_order_only_once_flushed(outbox: Outbox, loops: list[CountingLoop]) -> None:
    one, two = loops[0].consumer(), loops[0].consumer()
    outbox.put(one, "a")
    outbox.put(two, "x")
    outbox.put(one, "b")
    assert loops[0].size(one) == 0 and loops[0].size(two) == 0 and loops[0].wakeups == 0
    outbox.flush()
    assert loops[0].drain(one, 2) == ["a", "b"]
    assert loops[0].drain(two, 1) == ["x"]


def test_one_wakeup_per_loop_per_flush(outbox: Outbox, loops: list[CountingLoop]) -> None:
    first = [loops[0].consumer() for _ in range(8)]
    second = [loops[1].consumer() for _ in range(3)]
    for step in range(2):
        for consumer in first + second:
            outbox.put(consumer, step)
        outbox.flush()
        for loop, consumers in ((loops[0], first), (loops[1], second)):
            assert [loop.drain(consumer, 1) for consumer in consumers] == [[step]] * len(consumers)
    assert (loops[0].wakeups, loops[1].wakeups) == (2, 2)
    outbox.flush()  # nothing held: no wake-up at all
    outbox.put(first[0], "late")
    outbox.flush()
    assert loops[0].drain(first[0], 1) == ["late"]
    assert (loops[0].wakeups, loops[1].wakeups) == (3, 2)


def test_a_closed_loop_is_skipped_and_the_others_still_get_theirs(outbox: Outbox,
                                                                  loops: list[CountingLoop]) -> None:
    gone, alive = loops[0].consumer(), loops[1].consumer()
    loops[0].stop()
    outbox.put(gone, "lost")
    outbox.put(alive, "kept")
    outbox.flush()
    assert loops[1].drain(alive, 1) == ["kept"]


def test_close_delivers_what_was_held(loops: list[CountingLoop]) -> None:
    box = Outbox()
    consumer = loops[0].consumer()
    box.put(consumer, "last")
    box.close()
    assert loops[0].drain(consumer, 1) == ["last"]
