"""From engine tokens to API choices: UTF-8 assembly, stop sequences, logprobs, finish reasons.

Shared by every engine and by both response modes, so streamed and non-streamed answers of
the same seeded request carry the same text.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from reference_server.engines.base import Engine, GeneratedToken, SamplingParams
from reference_server.stop import StopMatcher
from reference_server.tool_calls import (
    FunctionTool,
    PlannedCalls,
    ToolCall,
    ToolCallPiece,
    WrittenCall,
    assemble,
    new_call_id,
)
from reference_server.tool_text import ArgumentsPiece, CallParser, CallStart, call_schema


@dataclass
class ChoicePiece:
    """Text that became safe to send for one choice, with the logprobs of the tokens behind it.

    `reasoning`: reasoning text (tokens the engine marked as reasoning), sent apart from `text`.
    `tool_calls`: pieces of the calls the choice makes (an answer with calls has no text).
    """

    text: str
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    reasoning: str = ""
    tool_calls: list[ToolCallPiece] = field(default_factory=list)


@dataclass
class ChoiceState:
    """What one choice has produced so far."""

    index: int
    completion_tokens: int = 0  # every generated token, reasoning ones included (OpenAI's usage)
    reasoning_tokens: int = 0


def _token_text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def logprob_entry(token: GeneratedToken) -> dict[str, Any]:
    """A token's logprobs in OpenAI's format (token, logprob, bytes, top_logprobs)."""
    return {
        "token": _token_text(token.piece),
        "logprob": token.logprob,
        "bytes": list(token.piece),
        "top_logprobs": [
            {"token": _token_text(piece), "logprob": lp, "bytes": list(piece)}
            for piece, lp in token.top_logprobs
        ],
    }


def choice_params(params: SamplingParams, index: int) -> SamplingParams:
    """Choice i of a seeded request samples with seed + i: choices differ, reruns repeat."""
    if params.seed is None or index == 0:
        return params
    return dataclasses.replace(params, seed=params.seed + index)


async def generate_choice(
    engine: Engine,
    prompt_tokens: list[int],
    params: SamplingParams,
    stops: list[str],
    state: ChoiceState,
    cancel: threading.Event,
    started: float | None = None,
    calls: PlannedCalls | WrittenCall | None = None,
) -> AsyncIterator[ChoicePiece]:
    """Yield pieces of one choice as they become safe to send; the last one has a finish_reason.

    Text that may begin a stop sequence is held back until resolved, and a multi-byte
    character is only released once all its bytes have arrived. Reasoning tokens go out as
    `reasoning` pieces at once: stop sequences and logprobs are about the content. With `calls`
    the choice is the calls the engine planned, or the one its model writes.
    """
    if isinstance(calls, PlannedCalls):
        pieces = _generate_calls(engine, prompt_tokens, params, calls.functions, state, cancel, started)
    elif isinstance(calls, WrittenCall):
        pieces = _generate_written(engine, prompt_tokens, params, stops, calls, state, cancel, started)
    else:
        pieces = _generate_text(engine.stream(prompt_tokens, choice_params(params, state.index), cancel, started),
                                params, stops, state)
    async with contextlib.aclosing(pieces):
        async for piece in pieces:
            yield piece


async def _generate_text(
    tokens: AsyncIterator[GeneratedToken], params: SamplingParams, stops: list[str], state: ChoiceState,
) -> AsyncIterator[ChoicePiece]:
    """A text answer from `tokens` (closed on the way out)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    thinking = codecs.getincrementaldecoder("utf-8")(errors="replace")
    matcher = StopMatcher(stops)
    pending_logprobs: list[dict[str, Any]] = []
    stopped = False
    try:
        async for token in tokens:
            state.completion_tokens += 1
            if token.reasoning:
                state.reasoning_tokens += 1
                yield ChoicePiece("", reasoning=thinking.decode(token.piece))
                continue
            if params.logprobs:
                pending_logprobs.append(logprob_entry(token))
            text, stopped = matcher.feed(decoder.decode(token.piece))
            if stopped:
                yield ChoicePiece(text, pending_logprobs, "stop")
                return
            if text:
                yield ChoicePiece(text, pending_logprobs)
                pending_logprobs = []
    finally:
        await tokens.aclose()
    tail, stopped = matcher.feed(decoder.decode(b"", final=True))
    if not stopped:
        tail += matcher.flush()
    reason = "stop" if stopped or state.completion_tokens < params.max_tokens else "length"
    yield ChoicePiece(tail, pending_logprobs, reason, thinking.decode(b"", final=True))


async def _generate_written(
    engine: Engine,
    prompt_tokens: list[int],
    params: SamplingParams,
    stops: list[str],
    call: WrittenCall,
    state: ChoiceState,
    cancel: threading.Event,
    started: float | None,
) -> AsyncIterator[ChoicePiece]:
    """The model's own answer to a request with tools. Forced: one call, under the grammar of a call
    to one of the tools. Auto: the model chooses as it opens its answer; an answer opening with `{`
    is a call, which the grammar then writes from the start (so a call is always whole and valid),
    anything else is a text answer (stop sequences and logprobs apply to it as to any text)."""
    if not call.forced:
        tokens = engine.stream(prompt_tokens, choice_params(params, state.index), cancel, started)
        opening: list[GeneratedToken] = []
        text = ""
        try:
            async for token in tokens:
                opening.append(token)
                text = b"".join(t.piece for t in opening if not t.reasoning).decode("utf-8", errors="ignore").lstrip()
                if text:
                    break
        except BaseException:
            await tokens.aclose()
            raise
        if not text.startswith("{"):
            async for piece in _generate_text(_chained(opening, tokens), params, stops, state):
                yield piece
            return
        await tokens.aclose()
        state.completion_tokens += len(opening)  # the opening the model chose with counts as generated
    async for piece in _written_call(engine, prompt_tokens, params, call.tools, state, cancel, started):
        yield piece


async def _chained(first: list[GeneratedToken], rest: AsyncIterator[GeneratedToken]) -> AsyncIterator[GeneratedToken]:
    """`first`, then what `rest` still yields (closed on the way out)."""
    try:
        for token in first:
            yield token
        async for token in rest:
            yield token
    finally:
        await rest.aclose()


async def _written_call(
    engine: Engine,
    prompt_tokens: list[int],
    params: SamplingParams,
    tools: tuple[FunctionTool, ...],
    state: ChoiceState,
    cancel: threading.Event,
    started: float | None,
) -> AsyncIterator[ChoicePiece]:
    """One call written under the grammar of `call_schema(tools)`, within the choice's max_tokens:
    its first piece (id, name, arguments "") goes out once the name is written, then the arguments
    as they come; the wrapper's closing brace is never sent. Stop sequences do not apply inside a
    call and it has no logprobs (OpenAI gives none for calls). finish_reason tool_calls, or length
    when the budget ran out inside the call (named still, when only one tool could be called)."""
    room = params.max_tokens - state.completion_tokens
    constrained = dataclasses.replace(choice_params(params, state.index), max_tokens=room, json_mode=True,
                                      json_schema=call_schema(tools), logprobs=False, top_logprobs=0)
    parser = CallParser()
    call_id = new_call_id()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tokens = engine.stream(prompt_tokens, constrained, cancel, started)
    try:
        async for token in tokens:
            state.completion_tokens += 1
            if token.reasoning:
                state.reasoning_tokens += 1
                yield ChoicePiece("", reasoning=token.piece.decode("utf-8", errors="replace"))
                continue
            for event in parser.feed(decoder.decode(token.piece)):
                yield ChoicePiece("", tool_calls=[_call_piece(event, call_id)])
            if parser.complete:
                break
    finally:
        await tokens.aclose()
    for event in parser.feed(decoder.decode(b"", final=True)):
        yield ChoicePiece("", tool_calls=[_call_piece(event, call_id)])
    if parser.name is None and len(tools) == 1:
        yield ChoicePiece("", tool_calls=[ToolCallPiece(0, "", call_id, tools[0].name)])
    yield ChoicePiece("", finish_reason="tool_calls" if parser.complete else "length")


def _call_piece(event: CallStart | ArgumentsPiece, call_id: str) -> ToolCallPiece:
    """A parsed event of a written call as a piece of call 0."""
    if isinstance(event, CallStart):
        return ToolCallPiece(0, "", call_id, event.name)
    return ToolCallPiece(0, event.text)


async def _generate_calls(
    engine: Engine,
    prompt_tokens: list[int],
    params: SamplingParams,
    calls: tuple[FunctionTool, ...],
    state: ChoiceState,
    cancel: threading.Event,
    started: float | None,
) -> AsyncIterator[ChoicePiece]:
    """The calls one after another, each one's arguments generated in JSON mode against its
    function's parameters, within the choice's max_tokens; finish_reason tool_calls, or length
    when the budget ran out inside a call. A call's first piece (id, name, arguments "") goes out
    with its first generated token, as a model's would: never before the engine's first token.
    Each call is a generation of its own: only the first is timed from the request's arrival
    (`started`); a later one from when it begins (the mock then waits its TTFT again, rather than
    sending a call whose deadlines all passed in one burst)."""
    for index, function in enumerate(calls):
        head: ToolCallPiece | None = ToolCallPiece(index, "", new_call_id(), function.name)
        room = params.max_tokens - state.completion_tokens
        constrained = dataclasses.replace(choice_params(params, state.index), max_tokens=room, json_mode=True,
                                          json_schema=function.parameters, logprobs=False, top_logprobs=0)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        used = 0
        tokens = engine.stream(prompt_tokens, constrained, cancel, started if index == 0 else None)
        try:
            async for token in tokens:
                state.completion_tokens += 1
                used += 1
                if token.reasoning:
                    state.reasoning_tokens += 1
                    yield ChoicePiece("", reasoning=token.piece.decode("utf-8", errors="replace"))
                    continue
                if head is not None:
                    yield ChoicePiece("", tool_calls=[head])
                    head = None
                fragment = decoder.decode(token.piece)
                if fragment:
                    yield ChoicePiece("", tool_calls=[ToolCallPiece(index, fragment)])
        finally:
            await tokens.aclose()
        if head is not None:  # no token came (a budget of zero, a cancel): the call is still named
            yield ChoicePiece("", tool_calls=[head])
        tail = decoder.decode(b"", final=True)
        if tail:
            yield ChoicePiece("", tool_calls=[ToolCallPiece(index, tail)])
        if used >= room:
            yield ChoicePiece("", finish_reason="length")
            return
    yield ChoicePiece("", finish_reason="tool_calls")


@dataclass
class CompletedChoice:
    """A whole non-streamed choice (its API shape: responses.CompletionChoice)."""

    index: int
    text: str
    finish_reason: str
    logprobs: list[dict[str, Any]] | None
    completion_tokens: int
    reasoning: str = ""
    reasoning_tokens: int = 0
    tool_calls: list[ToolCall] = field(default_factory=list)


async def complete_choice(
    engine: Engine,
    prompt_tokens: list[int],
    params: SamplingParams,
    stops: list[str],
    index: int,
    cancel: threading.Event,
    started: float | None = None,
    calls: PlannedCalls | WrittenCall | None = None,
) -> CompletedChoice:
    """Run one choice to the end and gather it. `started`: when the request arrived (loop time)."""
    state = ChoiceState(index)
    parts: list[str] = []
    thoughts: list[str] = []
    logprobs: list[dict[str, Any]] = []
    call_pieces: list[ToolCallPiece] = []
    reason = "stop"
    async for piece in generate_choice(engine, prompt_tokens, params, stops, state, cancel, started, calls):
        parts.append(piece.text)
        thoughts.append(piece.reasoning)
        logprobs.extend(piece.logprobs)
        call_pieces.extend(piece.tool_calls)
        reason = piece.finish_reason or reason
    return CompletedChoice(
        index=index,
        text="".join(parts),
        finish_reason=reason,
        logprobs=logprobs if params.logprobs else None,
        completion_tokens=state.completion_tokens,
        reasoning="".join(thoughts),
        reasoning_tokens=state.reasoning_tokens,
        tool_calls=assemble(call_pieces),
    )
