"""Stop sequences matched on text as it streams, holding back what may begin a stop sequence.

The API keeps the matched stop sequence: the returned text ends WITH it (see the spec's
`x-decisions`). Matching happens on decoded text, so it works the same for every engine.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Feed text pieces; get back what is safe to emit and whether a stop sequence matched."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._longest = max((len(s) for s in self.stops), default=0)
        self._pending = ""
        self.matched: str | None = None

    def feed(self, text: str) -> tuple[str, bool]:
        """Add `text`; return (text now safe to emit, whether a stop sequence completed).

        On a match the emitted text ends with the stop sequence and anything after it is dropped.
        """
        if self.matched is not None:
            return "", True
        if not self.stops:
            return text, False
        buffer = self._pending + text
        best: tuple[int, int, str] | None = None  # (end, start, stop)
        for stop in self.stops:
            start = buffer.find(stop)
            if start >= 0:
                candidate = (start + len(stop), start, stop)
                if best is None or candidate[:2] < best[:2]:
                    best = candidate
        if best is not None:
            end, _, stop = best
            self.matched = stop
            self._pending = ""
            return buffer[:end], True
        hold = self._held_suffix_length(buffer)
        self._pending = buffer[len(buffer) - hold :] if hold else ""
        return buffer[: len(buffer) - hold], False

    def flush(self) -> str:
        """Release held-back text at the end of generation (no stop sequence completed)."""
        pending, self._pending = self._pending, ""
        return pending

    def _held_suffix_length(self, buffer: str) -> int:
        """Length of the longest suffix of `buffer` that is a proper prefix of some stop sequence."""
        for size in range(min(len(buffer), self._longest - 1), 0, -1):
            tail = buffer[-size:]
            if any(stop.startswith(tail) for stop in self.stops):
                return size
        return 0
