"""How a streamed request's choices reach its writer (`handlers.ChoicePieces`): each starts at
once, every piece arrives tagged with its choice, an error is raised to the writer, and closing
stops what still runs. One choice is read directly, several through tasks: both held to this."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from reference_server.generation import ChoicePiece
from reference_server.handlers import ChoicePieces


class Choice:
    """A scripted choice: yields `texts` one loop turn apart, then raises `error` if given."""

    def __init__(self, texts: list[str], error: Exception | None = None) -> None:
        self.texts = texts
        self.error = error
        self.started = False
        self.closed = False

    async def run(self) -> AsyncIterator[ChoicePiece]:
        self.started = True
        try:
            for text in self.texts:
                await asyncio.sleep(0)
                yield ChoicePiece(text)
            if self.error is not None:
                raise self.error
        finally:
            self.closed = True


async def read_all(pieces: ChoicePieces) -> list[tuple[int, str]]:
    return [(index, piece.text) async for index, piece in pieces]


@pytest.mark.parametrize("count", [1, 3])
def test_every_choice_starts_at_once_and_each_piece_comes_with_its_index(count: int) -> None:
    async def scenario() -> None:
        choices = [Choice([f"{i}a", f"{i}b", f"{i}c"]) for i in range(count)]
        pieces = ChoicePieces([choice.run() for choice in choices])
        pieces.start()
        await asyncio.sleep(0)  # the handler's one turn before it writes the headers
        assert all(choice.started for choice in choices)
        got = await read_all(pieces)
        await pieces.aclose()
        for i in range(count):
            assert [text for index, text in got if index == i] == [f"{i}a", f"{i}b", f"{i}c"]
        assert len(got) == 3 * count and all(choice.closed for choice in choices)

    asyncio.run(scenario())


@pytest.mark.parametrize("count", [1, 2])
def test_a_choices_error_is_raised_to_the_reader(count: int) -> None:
    async def scenario() -> None:
        choices = [Choice(["x"], ValueError("engine failed"))] + [Choice(["y"] * 50) for _ in range(count - 1)]
        pieces = ChoicePieces([choice.run() for choice in choices])
        pieces.start()
        with pytest.raises(ValueError, match="engine failed"):
            await read_all(pieces)
        await pieces.aclose()
        assert all(choice.closed for choice in choices)  # the others were stopped

    asyncio.run(scenario())


@pytest.mark.parametrize("count", [1, 2])
def test_closing_early_stops_every_choice(count: int) -> None:
    async def scenario() -> None:
        choices = [Choice(["z"] * 100) for _ in range(count)]
        pieces = ChoicePieces([choice.run() for choice in choices])
        pieces.start()
        async for _ in pieces:
            break  # the client went away after one piece
        await pieces.aclose()
        assert all(choice.closed for choice in choices)

    asyncio.run(scenario())


def test_closing_before_the_first_piece_stops_the_choice() -> None:
    async def scenario() -> None:
        choice = Choice(["never read"])
        pieces = ChoicePieces([choice.run()])
        pieces.start()
        await asyncio.sleep(0)
        await pieces.aclose()
        assert choice.started and choice.closed

    asyncio.run(scenario())
