"""Trace replay: a JSONL trace in the Mooncake layout, one request per line,

    {"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, 48, ...]}

(timestamp in ms; hash_ids name the prompt's blocks of `block_tokens` tokens, 512 in Mooncake's
traces, each id standing for the whole prefix up to its block's end), sent at the recorded times
(open loop, `speed` times faster). Prompts are synthesized so that requests with equal leading
hash_ids share that prefix text, which is what a prefix cache would see in the recorded traffic.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from load.prompts import DatasetError, TokenScale, block_text
from load.workloads.base import PlannedRequest

MOONCAKE_BLOCK_TOKENS = 512


def read_trace(path: str | Path) -> list[dict[str, Any]]:
    """The trace's rows sorted by timestamp; a line that is not such a request is a DatasetError."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise DatasetError(f"{path}:{number}: not JSON ({exc})") from None
            ok = (isinstance(row, dict) and isinstance(row.get("timestamp"), int | float) and row["timestamp"] >= 0
                  and all(isinstance(row.get(k), int) and row[k] >= 1 for k in ("input_length", "output_length"))
                  and isinstance(row.get("hash_ids", []), list))
            if not ok:
                raise DatasetError(f"{path}:{number}: expected {{timestamp (ms, >= 0), input_length >= 1, "
                                   "output_length >= 1, hash_ids: [...]}} (the Mooncake layout)")
            rows.append({"timestamp": row["timestamp"], "input_length": row["input_length"],
                         "output_length": row["output_length"], "hash_ids": [str(h) for h in row.get("hash_ids", [])]})
    if not rows:
        raise DatasetError(f"{path}: no requests in the trace")
    return sorted(rows, key=lambda r: r["timestamp"])


class TraceSession:
    """Makes the request of whichever trace row the user's schedule slot is."""

    def __init__(self, workload: TraceWorkload, rng: random.Random) -> None:
        self._workload, self._rng = workload, rng

    def wait_s(self) -> float:
        return 0.0

    def next_request(self, slot: int | None) -> PlannedRequest:
        assert slot is not None, "a trace request is sent only in its slot"
        return self._workload.request(slot, self._rng)

    def answered(self, text: str | None) -> None:
        return None


@dataclass(frozen=True)
class TraceWorkload:
    """The rows of a trace, replayed `speed` times as fast as recorded."""

    rows: list[dict[str, Any]]
    scale: TokenScale
    speed: float = 1.0
    block_tokens: int = MOONCAKE_BLOCK_TOKENS
    source: str = ""
    seed: int = 0
    kind: ClassVar[str] = "trace"

    @property
    def span_s(self) -> float:
        """Seconds from the first request to the last at this speed."""
        return (self.rows[-1]["timestamp"] - self.rows[0]["timestamp"]) / 1000 / self.speed

    def request(self, index: int, rng: random.Random) -> PlannedRequest:
        """Row `index`: one block of text per hash id (the id's own words), then unique words up to
        input_length when the blocks fall short. The chat template's tokens come off the end (the
        last block is cut short, sharing what it keeps), so the prompt is input_length tokens long."""
        row = self.rows[index]
        budget = max(1, row["input_length"] - round(self.scale.overhead))
        pieces, blocks, covered = [], [], 0
        for hash_id in row["hash_ids"]:
            tokens = min(self.block_tokens, budget - covered)
            if tokens < 1:
                break
            block_id = f"trace/{self.seed}/{hash_id}"
            pieces.append(block_text(block_id, self.scale.text_words(tokens)))
            blocks.append((block_id, tokens))
            covered += tokens
        rest = budget - covered
        if rest >= 1:
            pieces.append(block_text(f"trace/{self.seed}/unique/{index}/{rng.random()}", self.scale.text_words(rest)))
        return PlannedRequest(messages=[{"role": "user", "content": "Continue this list: " + " ".join(pieces)}],
                              max_tokens=row["output_length"], requested_prompt_tokens=row["input_length"],
                              prefix_blocks=tuple(blocks))

    def session(self, rng: random.Random) -> TraceSession:
        return TraceSession(self, rng)

    def schedule(self, worker_index: int, workers: int) -> Iterator[tuple[int, int]]:
        """This worker's rows (every `workers`-th), each at its recorded time from the first row's."""
        start = self.rows[0]["timestamp"]
        for index in range(worker_index, len(self.rows), workers):
            yield int((self.rows[index]["timestamp"] - start) / self.speed * 1e6), index

    def describe(self) -> dict[str, Any]:
        return {"workload": self.kind, "trace": self.source, "trace_requests": len(self.rows),
                "trace_speed": self.speed, "trace_span_s": round(self.span_s, 3), "block_tokens": self.block_tokens}

    def to_wire(self) -> dict[str, Any]:
        return {"kind": self.kind, "rows": self.rows, "scale": [self.scale.overhead, self.scale.per_word],
                "speed": self.speed, "block_tokens": self.block_tokens, "source": self.source, "seed": self.seed}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> TraceWorkload:
        return cls(rows=data["rows"], scale=TokenScale(*data["scale"]), speed=data["speed"],
                   block_tokens=data["block_tokens"], source=data["source"], seed=data["seed"])
