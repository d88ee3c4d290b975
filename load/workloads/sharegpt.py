"""ShareGPT conversations, the layout vLLM `bench serve` and others read: a JSON list (or JSONL) of
{"conversations": [{"from": "human"|"gpt", "value": ...}, ...]}. Each conversation's first human
message is the prompt; its answer's length, counted by the endpoint itself, is the output length."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from load.lengths import LengthSpec
from load.prompts import DatasetError
from load.workloads.dataset import CyclingSession

HUMAN, GPT = ("human", "user"), ("gpt", "assistant", "chatgpt", "bard", "bing")


def read_sharegpt(path: str | Path, limit: int | None = None) -> list[dict[str, str]]:
    """[{"prompt", "answer"}] of the first `limit` usable conversations (a human turn answered by the
    model); conversations without one are skipped, as vLLM does. A file that is not ShareGPT is a
    DatasetError naming file (and line, for JSONL)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        items = json.loads(text) if text.lstrip().startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError as exc:
        raise DatasetError(f"{path}: not JSON or JSONL ({exc})") from None
    pairs: list[dict[str, str]] = []
    for number, item in enumerate(items, 1):
        turns = item.get("conversations") if isinstance(item, dict) else None
        if not isinstance(turns, list) or not all(isinstance(t, dict) and "from" in t and "value" in t
                                                  for t in turns):
            raise DatasetError(f"{path}: conversation {number} has no `conversations` list of "
                               "{\"from\", \"value\"} turns (the ShareGPT layout)")
        for first, second in zip(turns, turns[1:], strict=False):
            if (first["from"] in HUMAN and second["from"] in GPT and isinstance(first["value"], str)
                    and isinstance(second["value"], str) and first["value"].strip() and second["value"].strip()):
                pairs.append({"prompt": first["value"], "answer": second["value"]})
                break
        if limit is not None and len(pairs) >= limit:
            break
    if not pairs:
        raise DatasetError(f"{path}: no conversation with a human turn answered by the model")
    return pairs


def count_lengths(
    pairs: list[dict[str, str]], count_tokens: Callable[[list[dict[str, Any]]], int], *, answers: bool = True,
    threads: int = 4,
) -> list[dict[str, Any]]:
    """Each pair's prompt tokens (the prompt as sent) and, with `answers`, answer tokens (the answer as
    a user message, less an empty message's template tokens), both from the endpoint's usage."""

    def user(text: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": text}]

    with ThreadPoolExecutor(threads) as pool:
        prompts = list(pool.map(lambda p: count_tokens(user(p["prompt"])), pairs))
        if not answers:
            return [{"messages": user(p["prompt"]), "prompt_tokens": n} for p, n in zip(pairs, prompts, strict=True)]
        empty = count_tokens(user(""))
        lengths = list(pool.map(lambda p: count_tokens(user(p["answer"])), pairs))
    return [{"messages": user(p["prompt"]), "prompt_tokens": prompt, "max_tokens": max(1, answer - empty)}
            for p, prompt, answer in zip(pairs, prompts, lengths, strict=True)]


@dataclass(frozen=True)
class ShareGPTWorkload:
    """Counted conversations ({messages, prompt_tokens, max_tokens}); `output_tokens` replaces the
    answers' lengths when the user gave --output-tokens."""

    entries: list[dict[str, Any]]
    output_tokens: LengthSpec | None = None
    source: str = ""
    kind: ClassVar[str] = "sharegpt"

    def session(self, rng: random.Random) -> CyclingSession:
        return CyclingSession(self.entries, self.output_tokens, rng, override=True)

    def schedule(self, worker_index: int, workers: int) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"workload": self.kind, "dataset": self.source, "conversations": len(self.entries),
                "output_tokens": self.output_tokens.describe() if self.output_tokens
                else "the dataset answer's length (counted by the endpoint)"}

    def to_wire(self) -> dict[str, Any]:
        return {"kind": self.kind, "entries": self.entries, "source": self.source,
                "output_tokens": self.output_tokens.to_wire() if self.output_tokens else None}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ShareGPTWorkload:
        return cls(entries=data["entries"], source=data["source"],
                   output_tokens=LengthSpec.from_wire(data["output_tokens"]) if data["output_tokens"] else None)
