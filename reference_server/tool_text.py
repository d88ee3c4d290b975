"""Tool calls from any engine that can follow a JSON schema: the schema a call must follow, the
prompt that offers the tools to a model whose template knows nothing of them, and a parser that
turns the constrained text, as it streams, into a call's name and its argument fragments.

Why text: every engine here already constrains generation to a JSON schema (response_format), so a
forced call is a schema too, `{"name": <one of the tools>, "parameters": <its arguments>}` (Llama
3.1's own call form), and the engines need nothing new. The grammar writes properties in sorted
order, so "name" comes before "parameters": the name goes out in the first delta and the arguments
follow as they are generated (OpenAI's stream form).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ANY_OBJECT: dict[str, Any] = {"type": "object"}  # a function declared without parameters takes any object


@dataclass(frozen=True)
class FunctionTool:
    """A function the model may call: its name, the JSON Schema its arguments follow, and what it does."""

    name: str
    parameters: dict[str, Any]
    description: str = ""


def call_schema(tools: Sequence[FunctionTool]) -> dict[str, Any]:
    """The JSON schema of one call to any of `tools` (name first, then arguments)."""
    variants = [{"type": "object",
                 "properties": {"name": {"const": tool.name}, "parameters": tool.parameters or ANY_OBJECT},
                 "required": ["name", "parameters"], "additionalProperties": False} for tool in tools]
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


def tools_prompt(tools: Sequence[FunctionTool]) -> str:
    """A system message offering the tools, for chat templates that have no place for them."""
    listed = "\n".join(json.dumps({"name": t.name, "description": t.description, "parameters": t.parameters},
                                  ensure_ascii=False) for t in tools)
    return ("You can call these functions:\n" + listed + "\nTo call one, answer with only a JSON object "
            '{"name": <function name>, "parameters": <its arguments>}; otherwise answer in text.')


def offer_tools(messages: Sequence[dict[str, Any]], tools: Sequence[FunctionTool]) -> list[dict[str, Any]]:
    """The chat with the tools offered in its system message (after the request's own system text,
    or as a new first message)."""
    offer = tools_prompt(tools)
    if messages and messages[0].get("role") == "system":
        own = _text(messages[0].get("content"))
        return [{**messages[0], "content": f"{own}\n\n{offer}" if own else offer}, *messages[1:]]
    return [{"role": "system", "content": offer}, *messages]


def history_for_template(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages a plain chat template can render: an assistant's tool calls become its text (the
    call as the model would have written it), a `tool` message a user message holding the result."""
    plain: list[dict[str, Any]] = []
    for message in messages:
        calls = message.get("tool_calls") if message.get("role") == "assistant" else None
        if calls:
            text = "\n".join(json.dumps({"name": c["function"]["name"],
                                         "parameters": _arguments_value(c["function"].get("arguments", ""))},
                                        ensure_ascii=False) for c in calls)
            plain.append({"role": "assistant", "content": text})
        elif message.get("role") == "tool":
            plain.append({"role": "user", "content": f"Result of call {message.get('tool_call_id', '')}: "
                                                     f"{_text(message.get('content'))}"})
        else:
            plain.append(dict(message))
    return plain


def _arguments_value(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


# The call's head, as the grammar of call_schema lets it be written (" "? between tokens).
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"parameters"\s*:\s*')


@dataclass(frozen=True)
class CallStart:
    """The call's name is known: the first delta of the call goes out."""

    name: str


@dataclass(frozen=True)
class ArgumentsPiece:
    """More of the call's arguments text."""

    text: str


class CallParser:
    """Feeds text generated under the grammar of `call_schema`, yields CallStart once, then
    ArgumentsPiece fragments until the arguments' JSON value is closed; what follows it (the
    wrapper's `}`) is dropped. (Under `auto`, generation.py decides text or call by the answer's
    first character before a call is written under the grammar, so the text is always a call.)
    """

    def __init__(self) -> None:
        self._head = ""  # text before the arguments begin
        self._name: str | None = None
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._closed = False
        self.arguments = ""

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def complete(self) -> bool:
        """Whether a call's arguments were closed (a whole call was generated)."""
        return self._closed

    def feed(self, text: str) -> list[CallStart | ArgumentsPiece]:
        if self._name is None:
            self._head += text
            match = _HEAD.match(self._head)
            if match is None:
                return []
            self._name = json.loads(f'"{match.group(1)}"')
            rest = self._head[match.end():]
            return [CallStart(self._name), *self._arguments(rest)]
        return self._arguments(text)

    def _arguments(self, text: str) -> list[ArgumentsPiece]:
        if not self.arguments:
            text = text.lstrip()  # space the grammar allows before the value
        if self._closed or not text:
            return []
        taken = []
        for char in text:
            taken.append(char)
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                if self._depth == 0:
                    self._closed = True
                    break
        piece = "".join(taken)
        self.arguments += piece
        return [ArgumentsPiece(piece)]
