"""Tool-calling requests: each carries a list of function tools and a `tool_choice`, so the server
answers with calls (forced by `required` or a named function, chosen by the model under `auto`).

Why its own workload: an agent's requests are longer (the tool definitions ride in every prompt)
and their answers are streamed as tool-call deltas, not content; TTFT counts the first token of
any kind, a tool-call delta included (load/records.py), so the latency of a call is measured like
that of text. The tool list is the built-in `SAMPLE_TOOLS` or the user's own (`--tools-file`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from load.lengths import LengthSpec
from load.prompts import DISTINCT_WORDS, distinct_words
from load.workloads.base import IndependentSession, PlannedRequest

CHOICES = ("required", "auto", "named", "none")

# Three functions of the shapes agents send: strings, an enum, a bounded integer, an array.
SAMPLE_TOOLS: tuple[dict[str, Any], ...] = (
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "search_documents", "description": "Full-text search over the user's documents.",
        "parameters": {"type": "object", "properties": {
            "query": {"type": "string"},
            "limit": {"type": "integer", "minimum": 1, "maximum": 20}},
            "required": ["query"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "create_event", "description": "Add an event to the user's calendar.",
        "parameters": {"type": "object", "properties": {
            "title": {"type": "string"},
            "start": {"type": "string", "description": "ISO 8601 date and time"},
            "attendees": {"type": "array", "items": {"type": "string"}}},
            "required": ["title", "start"], "additionalProperties": False}}},
)


class ToolsFileError(ValueError):
    """A --tools-file that is not a usable list of function tools (one line, for exit 2)."""


def read_tools(path: str) -> tuple[dict[str, Any], ...]:
    """The tools of a JSON file: an array of OpenAI tool objects, each {"type": "function",
    "function": {"name", "parameters"?, "description"?}}, names distinct."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ToolsFileError(f"--tools-file {path}: {exc}") from None
    if not isinstance(data, list) or not data:
        raise ToolsFileError(f"--tools-file {path}: expected a non-empty JSON array of tools")
    names: set[str] = set()
    for index, tool in enumerate(data):
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        where = f"--tools-file {path}: tool {index}"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(name, str) or not name:
            raise ToolsFileError(f"{where}: needs \"type\": \"function\" and a \"function\" with a \"name\"")
        if "parameters" in function and not isinstance(function["parameters"], dict):
            raise ToolsFileError(f"{where} ({name}): \"parameters\" must be a JSON Schema object")
        if name in names:
            raise ToolsFileError(f"{where}: the name {name!r} is used twice")
        names.add(name)
    return tuple(data)


def tool_name(tool: dict[str, Any]) -> str:
    return str(tool["function"]["name"])


@dataclass(frozen=True)
class ToolsWorkload:
    """Prompts of `words` random words ending in a request for a tool, with `tools` and `choice`
    (required / auto / none, or named: each request forces one of the tools, drawn at random)."""

    output_tokens: LengthSpec
    tools: tuple[dict[str, Any], ...] = SAMPLE_TOOLS
    choice: str = "required"
    words: int = 32
    source: str = ""  # the --tools-file, when not the built-in sample
    kind: ClassVar[str] = "tools"

    def __post_init__(self) -> None:
        if self.choice not in CHOICES:
            raise ValueError(f"tool choice must be one of {', '.join(CHOICES)} (got {self.choice!r})")
        if not self.tools:
            raise ValueError("a tools workload needs at least one tool")

    def _tool_choice(self, rng: random.Random) -> str | dict[str, Any]:
        if self.choice != "named":
            return self.choice
        return {"type": "function", "function": {"name": tool_name(rng.choice(self.tools))}}

    def _draw(self, rng: random.Random) -> PlannedRequest:
        text = (f"Notes: {distinct_words(rng, self.words)}. "
                f"Use one of the tools ({', '.join(tool_name(t) for t in self.tools)}) for these notes.")
        return PlannedRequest(messages=[{"role": "user", "content": text}], max_tokens=self.output_tokens.draw(rng),
                              tools=self.tools, tool_choice=self._tool_choice(rng))

    def session(self, rng: random.Random) -> IndependentSession:
        return IndependentSession(self._draw, rng)

    def schedule(self, worker_index: int, workers: int) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        names = ", ".join(tool_name(t) for t in self.tools)
        words = max(self.words, DISTINCT_WORDS)
        return {"workload": self.kind, "prompt": f"{words} words + {len(self.tools)} tool definitions",
                "tools": names + (f" (from {self.source})" if self.source else ""),
                "tool_choice": self.choice, "output_tokens": self.output_tokens.describe()}

    def to_wire(self) -> dict[str, Any]:
        return {"kind": self.kind, "output_tokens": self.output_tokens.to_wire(), "tools": list(self.tools),
                "choice": self.choice, "words": self.words, "source": self.source}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ToolsWorkload:
        return cls(output_tokens=LengthSpec.from_wire(data["output_tokens"]), tools=tuple(data["tools"]),
                   choice=data["choice"], words=data["words"], source=data["source"])
