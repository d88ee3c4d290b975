"""Length distributions for prompts and outputs: `--prompt-tokens` / `--output-tokens` specs.

    128                  fixed
    uniform:64,256       uniform integers in [64, 256]
    normal:128,32        normal(mean 128, sd 32), rounded and clipped to [1, mean + 4 sd]
    normal:128,32,16,200 the same, clipped to [16, 200]
    file:lengths.txt     empirical: drawn from the file's integers (one or more per line, or a JSON list)

Real traffic has a spread of lengths, and a server batches and queues differently when it does; a
spec is parsed once (the file read then) and travels to workers as its values.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = ("fixed", "uniform", "normal", "empirical")
SPEC_HELP = ("N, uniform:A,B, normal:MEAN,SD[,MIN,MAX] (clipped) or file:PATH (empirical: integers from "
             "the file)")


class LengthSpecError(ValueError):
    """A length spec that cannot be used; the message says which part."""


@dataclass(frozen=True)
class LengthSpec:
    """A distribution of positive integer lengths."""

    kind: str
    params: tuple[float, ...] = ()
    values: tuple[int, ...] = ()  # empirical only

    def draw(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return int(self.params[0])
        if self.kind == "uniform":
            return rng.randint(int(self.params[0]), int(self.params[1]))
        if self.kind == "normal":
            mean, sd, low, high = self.params
            return int(min(max(round(rng.gauss(mean, sd)), low), high))
        return rng.choice(self.values)

    @property
    def fixed(self) -> int | None:
        return int(self.params[0]) if self.kind == "fixed" else None

    @property
    def bounds(self) -> tuple[int, int]:
        """The smallest and largest length it can draw."""
        if self.kind == "fixed":
            return int(self.params[0]), int(self.params[0])
        if self.kind == "empirical":
            return min(self.values), max(self.values)
        if self.kind == "uniform":
            return int(self.params[0]), int(self.params[1])
        return int(self.params[2]), int(self.params[3])

    def describe(self) -> str:
        if self.kind == "fixed":
            return str(int(self.params[0]))
        if self.kind == "empirical":
            return f"empirical ({len(self.values)} values, {min(self.values)}..{max(self.values)})"
        return f"{self.kind}:{','.join(f'{p:g}' for p in self.params)}"

    def to_wire(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": list(self.params), "values": list(self.values)}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> LengthSpec:
        return cls(data["kind"], tuple(data["params"]), tuple(data["values"]))


def _numbers(text: str, spec: str, count: tuple[int, ...]) -> list[float]:
    try:
        numbers = [float(x) for x in text.split(",")]
    except ValueError:
        raise LengthSpecError(f"{spec!r}: {text!r} is not a comma-separated list of numbers") from None
    if len(numbers) not in count:
        raise LengthSpecError(f"{spec!r}: expected {' or '.join(map(str, count))} numbers")
    return numbers


def parse_length(spec: str) -> LengthSpec:
    """Parse a spec (see the module docstring); LengthSpecError names what is wrong."""
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if not sep:
        value = _numbers(spec, spec, (1,))[0]
        if value != int(value) or value < 1:
            raise LengthSpecError(f"{spec!r}: a fixed length must be a whole number >= 1")
        return LengthSpec("fixed", (value,))
    if kind == "uniform":
        low, high = _numbers(rest, spec, (2,))
        if low != int(low) or high != int(high) or not 1 <= low <= high:
            raise LengthSpecError(f"{spec!r}: uniform needs whole numbers 1 <= A <= B")
        return LengthSpec("uniform", (low, high))
    if kind == "normal":
        numbers = _numbers(rest, spec, (2, 4))
        mean, sd = numbers[:2]
        low, high = numbers[2:] if len(numbers) == 4 else (1.0, float(round(mean + 4 * sd)))
        if sd < 0 or low < 1 or high < low or mean <= 0:
            raise LengthSpecError(f"{spec!r}: normal needs mean > 0, sd >= 0 and 1 <= MIN <= MAX")
        return LengthSpec("normal", (mean, sd, float(round(low)), float(round(high))))
    if kind == "file":
        return LengthSpec("empirical", values=tuple(read_lengths(rest)))
    raise LengthSpecError(f"{spec!r}: expected {SPEC_HELP}")


def read_lengths(path: str) -> list[int]:
    """The integers of an empirical length file (a JSON list, or whitespace/comma separated)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise LengthSpecError(f"cannot read length file {path}: {exc.strerror or exc}") from None
    try:
        items = json.loads(text) if text.lstrip().startswith("[") else text.replace(",", " ").split()
        values = [int(x) for x in items]
    except (ValueError, TypeError):
        raise LengthSpecError(f"{path}: expected integers (a JSON list, or one or more per line)") from None
    if not values or min(values) < 1:
        raise LengthSpecError(f"{path}: expected at least one length, every one >= 1")
    return values


def fixed_length(value: int) -> LengthSpec:
    """Always `value`."""
    return LengthSpec("fixed", (float(value),))
