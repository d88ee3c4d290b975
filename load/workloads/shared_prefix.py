"""Shared-prefix prompts: G groups, each with its own system prompt of P tokens, plus a unique user
suffix per request: the pattern a prefix cache serves (many users of one assistant)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar

from load.lengths import LengthSpec
from load.prompts import PromptPlan, TokenScale, block_text
from load.workloads.base import IndependentSession, PlannedRequest


@dataclass(frozen=True)
class SharedPrefixWorkload:
    """Each request: the system prompt of a random group (`prefix_tokens`), then a fresh suffix."""

    groups: int
    prefix_tokens: int
    suffix_tokens: LengthSpec
    output_tokens: LengthSpec
    scale: TokenScale
    seed: int = 0
    kind: ClassVar[str] = "shared-prefix"

    def _draw(self, rng: random.Random) -> PlannedRequest:
        group = rng.randrange(self.groups)
        block_id = f"prefix/{self.seed}/{group}"
        suffix = self.suffix_tokens.draw(rng)
        system = {"role": "system", "content": block_text(block_id, self.scale.text_words(self.prefix_tokens))}
        user = PromptPlan(self.scale.words(suffix)).messages(rng)
        return PlannedRequest(messages=[system, *user], max_tokens=self.output_tokens.draw(rng),
                              requested_prompt_tokens=self.prefix_tokens + suffix,
                              prefix_blocks=((block_id, self.prefix_tokens),))

    def session(self, rng: random.Random) -> IndependentSession:
        return IndependentSession(self._draw, rng)

    def schedule(self, worker_index: int, workers: int) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"workload": self.kind, "groups": self.groups, "prefix_tokens": self.prefix_tokens,
                "suffix_tokens": self.suffix_tokens.describe(), "output_tokens": self.output_tokens.describe()}

    def to_wire(self) -> dict[str, Any]:
        return {"kind": self.kind, "groups": self.groups, "prefix_tokens": self.prefix_tokens,
                "suffix_tokens": self.suffix_tokens.to_wire(), "output_tokens": self.output_tokens.to_wire(),
                "scale": [self.scale.overhead, self.scale.per_word], "seed": self.seed}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> SharedPrefixWorkload:
        return cls(groups=data["groups"], prefix_tokens=data["prefix_tokens"],
                   suffix_tokens=LengthSpec.from_wire(data["suffix_tokens"]),
                   output_tokens=LengthSpec.from_wire(data["output_tokens"]), scale=TokenScale(*data["scale"]),
                   seed=data["seed"])
