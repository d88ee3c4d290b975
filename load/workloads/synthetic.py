"""Synthetic prompts of random words, their prompt and output lengths fixed or drawn from a distribution."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar

from load.lengths import LengthSpec
from load.prompts import DISTINCT_WORDS, PromptPlan, TokenScale
from load.workloads.base import IndependentSession, PlannedRequest


@dataclass(frozen=True)
class SyntheticWorkload:
    """`words`-word prompts, or prompts aimed at `prompt_tokens` through the endpoint's `scale`.

    A fixed `prompt_tokens` was calibrated to `words` exactly; a distribution goes through `scale`.
    """

    output_tokens: LengthSpec
    words: int = 32
    prompt_tokens: LengthSpec | None = None
    scale: TokenScale | None = None
    kind: ClassVar[str] = "synthetic"

    def _draw(self, rng: random.Random) -> PlannedRequest:
        words, target = self.words, None
        if self.prompt_tokens is not None:
            target = self.prompt_tokens.draw(rng)
            if self.prompt_tokens.fixed is None:
                assert self.scale is not None, "a prompt length distribution needs a fitted token scale"
                words = self.scale.words(target)
        return PlannedRequest(messages=PromptPlan(words).messages(rng), max_tokens=self.output_tokens.draw(rng),
                              requested_prompt_tokens=target)

    def session(self, rng: random.Random) -> IndependentSession:
        return IndependentSession(self._draw, rng)

    def schedule(self, worker_index: int, workers: int) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        words = max(self.words, DISTINCT_WORDS)
        prompt = f"{self.prompt_tokens.describe()} tokens" if self.prompt_tokens else f"{words} words"
        return {"workload": self.kind, "prompt": prompt, "output_tokens": self.output_tokens.describe()}

    def to_wire(self) -> dict[str, Any]:
        return {"kind": self.kind, "output_tokens": self.output_tokens.to_wire(), "words": self.words,
                "prompt_tokens": self.prompt_tokens.to_wire() if self.prompt_tokens else None,
                "scale": [self.scale.overhead, self.scale.per_word] if self.scale else None}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> SyntheticWorkload:
        return cls(output_tokens=LengthSpec.from_wire(data["output_tokens"]), words=data["words"],
                   prompt_tokens=LengthSpec.from_wire(data["prompt_tokens"]) if data["prompt_tokens"] else None,
                   scale=TokenScale(*data["scale"]) if data["scale"] else None)
