"""Multi-turn sessions: each user holds a conversation of T turns; every next request carries the
whole history plus the server's previous answer, after a think time. Turn 5's TTFT against turn 1's
shows whether the server reuses the history it has already seen (prefix caching)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar

from load.lengths import LengthSpec
from load.prompts import PromptPlan, TokenScale
from load.workloads.base import PlannedRequest


class Conversation:
    """One user's conversations, one after another; a failed turn ends its conversation."""

    def __init__(self, workload: MultiTurnWorkload, rng: random.Random) -> None:
        self._workload, self._rng = workload, rng
        self._history: list[dict[str, Any]] = []
        self._turn = 0
        self._think = 0.0

    def wait_s(self) -> float:
        think, self._think = self._think, 0.0
        return think

    def next_request(self, slot: int | None) -> PlannedRequest:
        workload = self._workload
        if self._turn == 0:
            self._history = []
        self._turn += 1
        words = workload.words
        if workload.user_tokens is not None and workload.scale is not None:
            words = workload.scale.words(workload.user_tokens.draw(self._rng))
        self._history.append(PromptPlan(words).messages(self._rng)[0])
        return PlannedRequest(messages=list(self._history), max_tokens=workload.output_tokens.draw(self._rng),
                              turn=self._turn)

    def answered(self, text: str | None) -> None:
        if text is None or self._turn >= self._workload.turns:
            self._turn, self._think = 0, 0.0  # the next request starts a new conversation, at once
            return
        self._history.append({"role": "assistant", "content": text})
        self._think = self._workload.think_s


@dataclass(frozen=True)
class MultiTurnWorkload:
    """Conversations of `turns` turns; each user message `user_tokens` (or `words` words) long."""

    turns: int
    think_s: float
    output_tokens: LengthSpec
    words: int = 32
    user_tokens: LengthSpec | None = None
    scale: TokenScale | None = None
    kind: ClassVar[str] = "multi-turn"

    def session(self, rng: random.Random) -> Conversation:
        return Conversation(self, rng)

    def schedule(self, worker_index: int, workers: int) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        message = f"{self.user_tokens.describe()} tokens" if self.user_tokens else f"{self.words} words"
        return {"workload": self.kind, "turns": self.turns, "think_time_s": self.think_s,
                "user_message": message, "output_tokens": self.output_tokens.describe()}

    def to_wire(self) -> dict[str, Any]:
        return {"kind": self.kind, "turns": self.turns, "think_s": self.think_s,
                "output_tokens": self.output_tokens.to_wire(), "words": self.words,
                "user_tokens": self.user_tokens.to_wire() if self.user_tokens else None,
                "scale": [self.scale.overhead, self.scale.per_word] if self.scale else None}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> MultiTurnWorkload:
        return cls(turns=data["turns"], think_s=data["think_s"],
                   output_tokens=LengthSpec.from_wire(data["output_tokens"]), words=data["words"],
                   user_tokens=LengthSpec.from_wire(data["user_tokens"]) if data["user_tokens"] else None,
                   scale=TokenScale(*data["scale"]) if data["scale"] else None)
