"""`--dataset FILE.jsonl`: the user's own requests (a list of messages, or {messages, max_tokens}) in order."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar

from load.lengths import LengthSpec
from load.workloads.base import PlannedRequest


class CyclingSession:
    """The entries in file order, from a per-user starting point (users do not all send line 1 first).

    max_tokens: the entry's own, else a draw from `output_tokens`; with `override`, a draw from
    `output_tokens` whenever it is given (ShareGPT with --output-tokens). An entry's `prompt_tokens`
    (counted by the endpoint) is what was asked."""

    def __init__(self, entries: list[dict[str, Any]], output_tokens: LengthSpec | None, rng: random.Random,
                 override: bool = False) -> None:
        self._entries, self._output, self._rng, self._override = entries, output_tokens, rng, override
        self._index = rng.randrange(len(entries))

    def wait_s(self) -> float:
        return 0.0

    def next_request(self, slot: int | None) -> PlannedRequest:
        entry = self._entries[self._index % len(self._entries)]
        self._index += 1
        own = entry.get("max_tokens")
        draw = self._output is not None and (self._override or not own)
        return PlannedRequest(messages=entry["messages"], max_tokens=self._output.draw(self._rng) if draw else own,
                              requested_prompt_tokens=entry.get("prompt_tokens"))

    def answered(self, text: str | None) -> None:
        return None


@dataclass(frozen=True)
class DatasetWorkload:
    """Requests read from a JSONL file (load.prompts.load_dataset); max_tokens from the line or --output-tokens."""

    entries: list[dict[str, Any]]
    output_tokens: LengthSpec
    source: str = ""
    kind: ClassVar[str] = "dataset"

    def session(self, rng: random.Random) -> CyclingSession:
        return CyclingSession(self.entries, self.output_tokens, rng)

    def schedule(self, worker_index: int, workers: int) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"workload": self.kind, "dataset": self.source, "requests_in_file": len(self.entries),
                "output_tokens": f"from the file, else {self.output_tokens.describe()}"}

    def to_wire(self) -> dict[str, Any]:
        return {"kind": self.kind, "entries": self.entries, "output_tokens": self.output_tokens.to_wire(),
                "source": self.source}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> DatasetWorkload:
        return cls(entries=data["entries"], output_tokens=LengthSpec.from_wire(data["output_tokens"]),
                   source=data["source"])
