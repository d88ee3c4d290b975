"""What every workload hands its users: the next request, planned, and what was asked of it.

A workload is plain data (it travels to workers as a dict) that makes one `Session` per Locust
user. The user asks its session for the next `PlannedRequest`, sends it, and tells the session the
answer (multi-turn sessions carry it into the next turn). What the plan asked for (prompt and output
length, the shared prefix it carries, the turn) goes into the request's record, so the report can
set what was asked beside what the server served.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class PlannedRequest:
    """One request as the workload means it."""

    messages: list[dict[str, Any]]
    max_tokens: int
    # The prompt length the workload aimed at, in the endpoint's tokens (None: not planned in tokens).
    requested_prompt_tokens: int | None = None
    # The prompt's leading shared blocks as (id, tokens): an id names the whole prefix up to the end
    # of its block, so two prompts with the same first k ids share those blocks' text.
    prefix_blocks: tuple[tuple[str, int], ...] = ()
    turn: int | None = None  # multi-turn: 1 for a conversation's first request
    # Tool calling (the tools workload): the function tools offered and the tool_choice (None: not sent).
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: str | dict[str, Any] | None = None


class Session(Protocol):
    """One user's source of requests."""

    def wait_s(self) -> float:
        """Seconds to wait before taking the next request (a user reading the last answer); 0: none."""
        ...

    def next_request(self, slot: int | None) -> PlannedRequest:
        """The next request; `slot` is its index in the workload's own schedule (trace replay)."""
        ...

    def answered(self, text: str | None) -> None:
        """The answer's text (None: the request failed)."""
        ...


class Workload(Protocol):
    """What a load run sends; built from its wire form in every process."""

    kind: str

    def session(self, rng: random.Random) -> Session: ...

    def schedule(self, worker_index: int, workers: int) -> Iterator[tuple[int, int]] | None:
        """(intended send time in ns from the step's start, slot) of this worker's share, when the
        workload has its own timing (trace replay); None: closed loop or --rate arrivals."""
        ...

    def describe(self) -> dict[str, Any]:
        """The workload's settings for the report."""
        ...

    def to_wire(self) -> dict[str, Any]: ...


class IndependentSession:
    """A session whose requests do not depend on each other: each is drawn fresh."""

    def __init__(self, draw: Callable[[random.Random], PlannedRequest], rng: random.Random) -> None:
        self._draw, self._rng = draw, rng

    def wait_s(self) -> float:
        return 0.0

    def next_request(self, slot: int | None) -> PlannedRequest:
        return self._draw(self._rng)

    def answered(self, text: str | None) -> None:
        return None


def request_body(planned: PlannedRequest, *, model: str, stream: bool, extra_body: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of a planned request (extra_body last: the user's own fields win)."""
    body: dict[str, Any] = {"model": model, "messages": planned.messages, "max_tokens": planned.max_tokens,
                            "stream": stream}
    if planned.tools:
        body["tools"] = list(planned.tools)
    if planned.tool_choice is not None:
        body["tool_choice"] = planned.tool_choice
    if stream:
        body["stream_options"] = {"include_usage": True}
    body.update(extra_body)
    return body
