"""The shapes the server answers with, as typed records: a `chat.completion` and its stream chunks.

Why records: both response modes build their bodies here and nowhere else, so a field is added
once (a record's optional field, left out of the JSON while None) and both modes carry it.
Key order is OpenAI's, and tests compare bytes: each `to_json` writes its keys in that order.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from reference_server.generation import CompletedChoice
from reference_server.tool_calls import ToolCall, ToolCallPiece

REASONING_CONTENT = "reasoning_content"  # DeepSeek's and older vLLM's key for reasoning text


@dataclass(frozen=True)
class ResponseHeader:
    """What every body of one response carries: its id, when it was made, the model named."""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, model: str) -> ResponseHeader:
        return cls(id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=model)

    def to_json(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "created": self.created, "model": self.model, "object": kind}


@dataclass(frozen=True)
class Usage:
    """Token counts; total is always the sum. Reasoning tokens are part of completion_tokens and,
    when there are any, also counted apart in completion_tokens_details (OpenAI's form)."""

    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        if self.reasoning_tokens:
            body["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return body


@dataclass(frozen=True)
class Logprobs:
    """A choice's (or a chunk's) logprob entries, in OpenAI's format (see generation.logprob_entry)."""

    content: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"content": self.content, "refusal": None}


def _logprobs_json(logprobs: Logprobs | None) -> dict[str, Any] | None:
    return logprobs.to_json() if logprobs is not None else None


@dataclass(frozen=True)
class Message:
    """The assistant's whole answer in a non-streamed choice. `reasoning`: None when the model did
    not reason (the key is then left out), else its reasoning text under `reasoning_field`.
    `tool_calls`: the calls it makes (content is then null unless it also wrote text)."""

    content: str
    reasoning: str | None = None
    reasoning_field: str = REASONING_CONTENT
    tool_calls: tuple[ToolCall, ...] = ()

    def to_json(self) -> dict[str, Any]:
        content = (self.content or None) if self.tool_calls else self.content
        body: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}  # spec x-decisions
        if self.reasoning is not None:
            body[self.reasoning_field] = self.reasoning
        if self.tool_calls:
            body["tool_calls"] = [call.to_api() for call in self.tool_calls]
        return body


@dataclass(frozen=True)
class Delta:
    """What one chunk adds to a choice; every field left as None stays out of the JSON.

    The choice's first delta names the role, and carries `refusal: null` with it (OpenAI's form).
    """

    role: str | None = None
    content: str | None = None
    reasoning: str | None = None
    reasoning_field: str = REASONING_CONTENT
    tool_calls: tuple[ToolCallPiece, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.role is not None:
            body["role"] = self.role
        if self.content is not None:
            body["content"] = self.content
        if self.role is not None:
            body["refusal"] = None
        if self.reasoning is not None:
            body[self.reasoning_field] = self.reasoning
        if self.tool_calls is not None:
            body["tool_calls"] = [piece.to_delta() for piece in self.tool_calls]
        return body


OPENING_DELTA = Delta(role="assistant", content="")


@dataclass(frozen=True)
class CompletionChoice:
    """One choice of a `chat.completion`."""

    index: int
    message: Message
    finish_reason: str
    logprobs: Logprobs | None = None

    @classmethod
    def from_completed(cls, choice: CompletedChoice, reasoning_field: str = REASONING_CONTENT) -> CompletionChoice:
        """The record of a generated choice; reasoning is shown when the model produced reasoning tokens."""
        return cls(
            index=choice.index,
            message=Message(choice.text, choice.reasoning if choice.reasoning_tokens else None, reasoning_field,
                            tuple(choice.tool_calls)),
            finish_reason=choice.finish_reason,
            logprobs=Logprobs(choice.logprobs) if choice.logprobs is not None else None,
        )

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "message": self.message.to_json(), "finish_reason": self.finish_reason,
                "logprobs": _logprobs_json(self.logprobs)}


@dataclass(frozen=True)
class ChunkChoice:
    """One choice's part of a stream chunk."""

    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: Logprobs | None = None

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "delta": self.delta.to_json(), "finish_reason": self.finish_reason,
                "logprobs": _logprobs_json(self.logprobs)}


@dataclass(frozen=True)
class Completion:
    """A whole non-streamed answer."""

    header: ResponseHeader
    choices: list[CompletionChoice]
    usage: Usage

    def to_json(self) -> dict[str, Any]:
        return {**self.header.to_json("chat.completion"), "choices": [c.to_json() for c in self.choices],
                "usage": self.usage.to_json()}


@dataclass(frozen=True)
class Chunk:
    """One event of a streamed answer: choice deltas, or (the last one) no choices and the usage."""

    header: ResponseHeader
    choices: list[ChunkChoice]
    usage: Usage | None = None

    def to_json(self) -> dict[str, Any]:
        body = {**self.header.to_json("chat.completion.chunk"), "choices": [c.to_json() for c in self.choices]}
        if self.usage is not None:
            body["usage"] = self.usage.to_json()
        return body
