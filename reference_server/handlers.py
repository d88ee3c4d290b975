"""The routes over one engine: /health, /metrics, {root}/models and {root}/chat/completions in both
response modes. HTTP hygiene is `transport`'s, body shapes are `responses`', tokens to choices is
`generation`'s: what is left here is the order of things and the queue."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from reference_server import generation, recording, tool_calls
from reference_server.config import ServerConfig
from reference_server.engines.base import Engine, SamplingParams
from reference_server.errors import ApiError
from reference_server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from reference_server.metrics import RequestTracker, ServerMetrics, TimedEngine
from reference_server.responses import (
    OPENING_DELTA,
    Chunk,
    ChunkChoice,
    Completion,
    CompletionChoice,
    Delta,
    Logprobs,
    ResponseHeader,
    Usage,
)
from reference_server.sse import DONE_EVENT, TextEvents, encode_event, open_event_stream
from reference_server.transport import BearerAuth, read_json
from reference_server.validation import ChatRequest, fit_to_context, parse_request

log = logging.getLogger("reference_server")


class Server:
    """Request handling for one engine."""

    def __init__(self, engine: Engine, config: ServerConfig) -> None:
        self.engine = engine
        self.config = config
        self.in_flight = 0
        self.metrics = ServerMetrics(engine=config.engine_label or type(engine).__name__, model=engine.model_name,
                                     multiprocess_dir=config.metrics_dir)
        self.auth = BearerAuth.of(config.api_keys, config.auth_required)
        # Validated and accepted, then dropped by the engine: said once here and on every /health.
        self.ignored_parameters = engine.ignored_parameters(config.api)
        if self.ignored_parameters:
            log.warning("engine %s does not apply the spec parameter(s) %s: requests may carry them, and they "
                        "change nothing", type(engine).__name__, ", ".join(self.ignored_parameters))

    def model_names(self) -> tuple[str, ...]:
        """Names a request may use for this server's model."""
        return (self.engine.model_name, *self.config.extra_model_names)

    # ---- handlers ------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "ok", "model": self.engine.model_name, "in_flight": self.in_flight,
             "engine": self.engine.stats(), "ignored_parameters": list(self.ignored_parameters)}
        )

    async def prometheus(self, request: web.Request) -> web.Response:
        """Prometheus text exposition (no key needed, like /health)."""
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def models(self, request: web.Request) -> web.Response:
        self.auth.check(request)
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": 0, "owned_by": "chatspec"}
                    for name in self.model_names()
                ],
            }
        )

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        started = asyncio.get_running_loop().time()  # engines with scripted timing count from here
        self.auth.check(request)
        body = await read_json(request, self.config.max_body_bytes, self.config.body_timeout_s)
        chat = parse_request(body, vocab_size=self.engine.vocab_size, api=self.config.api)
        if chat.model not in self.model_names():
            raise ApiError(
                404,
                f"The model {chat.model!r} does not exist; this server serves "
                f"{', '.join(map(repr, self.model_names()))}.",
                param="model",
                code="model_not_found",
            )
        calls = tool_calls.calls_for(self.engine, chat.tools)  # before rendering: an engine without tools says so
        try:
            prompt = self.engine.tokenize_chat(tool_calls.prompt_messages(self.engine, chat.messages, chat.tools))
        except ValueError as exc:
            raise ApiError(400, f"The messages cannot be rendered: {exc}", param="messages") from exc
        max_tokens = fit_to_context(chat, len(prompt), self.engine.context_length)
        if self.in_flight >= self.config.max_queue:
            raise ApiError(
                429,
                f"The server is at its queue depth of {self.config.max_queue} requests; retry later.",
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(self.config.retry_after_s)},
            )
        params = chat.sampling
        if max_tokens != params.max_tokens:
            params = dataclasses.replace(params, max_tokens=max_tokens)
        self.in_flight += 1
        tracker = self.metrics.track(started, len(prompt))
        header = ResponseHeader.new(chat.model)
        recording.note(response_id=header.id)
        try:
            if chat.stream:
                return await self._stream(request, chat, header, prompt, params, started, tracker, calls)
            return await self._complete(chat, header, prompt, params, started, tracker, calls)
        finally:
            self.in_flight -= 1
            tracker.finish(asyncio.get_running_loop().time(), chat.n)

    async def _complete(
        self, chat: ChatRequest, header: ResponseHeader, prompt: list[int], params: SamplingParams, started: float,
        tracker: RequestTracker, calls: tool_calls.PlannedCalls | tool_calls.WrittenCall | None = None,
    ) -> web.Response:
        cancel = threading.Event()
        engine = TimedEngine(self.engine, tracker)
        tasks = [asyncio.ensure_future(generation.complete_choice(engine, prompt, params, chat.stops, i,
                                                                  cancel, started, calls))
                 for i in range(chat.n)]  # the choices run at once (a batching engine decodes them together)
        try:
            choices = await asyncio.gather(*tasks)
        finally:
            await _cancel_all(tasks)
        tracker.reasons.extend(choice.finish_reason for choice in choices)
        completion = Completion(
            header=header,
            choices=[CompletionChoice.from_completed(choice, self.config.reasoning_field) for choice in choices],
            usage=Usage(len(prompt), sum(choice.completion_tokens for choice in choices),
                        sum(choice.reasoning_tokens for choice in choices)),
        )
        return web.json_response(completion.to_json(), dumps=_dumps)

    async def _stream(
        self, request: web.Request, chat: ChatRequest, header: ResponseHeader, prompt: list[int],
        params: SamplingParams, started: float, tracker: RequestTracker,
        calls: tool_calls.PlannedCalls | tool_calls.WrittenCall | None = None,
    ) -> web.StreamResponse:
        cancel = threading.Event()
        states = [generation.ChoiceState(index) for index in range(chat.n)]
        engine = TimedEngine(self.engine, tracker)
        reasoning_field = self.config.reasoning_field
        choices = ChoicePieces([generation.generate_choice(engine, prompt, params, chat.stops, state, cancel, started,
                                                           calls) for state in states])

        async def send(chunk: Chunk) -> None:
            await response.write(encode_event(chunk.to_json()))

        async def send_choice(choice: ChunkChoice) -> None:
            await send(Chunk(header, [choice]))

        text_events = TextEvents(lambda index, text: Chunk(header, [ChunkChoice(index, Delta(content=text))]).to_json())

        # The choices start first: one step of the loop takes each to its engine (a prompt starts
        # evaluating), and the headers and opening chunks go out while it runs, not before it.
        choices.start()
        try:
            await asyncio.sleep(0)
            response = await open_event_stream(request)
            try:
                for index in range(chat.n):
                    await send_choice(ChunkChoice(index, OPENING_DELTA))
                async for index, piece in choices:
                    if piece.reasoning:
                        await send_choice(ChunkChoice(index, Delta(reasoning=piece.reasoning,
                                                                   reasoning_field=reasoning_field)))
                    if piece.tool_calls:
                        await send_choice(ChunkChoice(index, Delta(tool_calls=tuple(piece.tool_calls))))
                    if piece.text or piece.logprobs:
                        if params.logprobs:
                            await send_choice(ChunkChoice(index, Delta(content=piece.text),
                                                          logprobs=Logprobs(piece.logprobs)))
                        else:
                            await response.write(text_events.event(index, piece.text))
                    if piece.finish_reason:
                        tracker.reasons.append(piece.finish_reason)
                        await send_choice(ChunkChoice(index, Delta(), finish_reason=piece.finish_reason))
                usage = Usage(len(prompt), sum(state.completion_tokens for state in states),
                              sum(state.reasoning_tokens for state in states))
                await send(Chunk(header, [], usage))
                await response.write(DONE_EVENT)
                await response.write_eof()
            except (ConnectionResetError, ConnectionError) as exc:
                cancel.set()
                log.info("client went away mid-stream: %s", exc)
        finally:
            await choices.aclose()  # a failed write stops every choice's generation at once
        return response


class ChoicePieces:
    """The pieces of a request's choices as (choice index, piece), in the order they come; every
    choice starts at `start` (its prompt reaches the engine at the loop's next turn).

    One choice (most requests) is read straight from its generator: no task and no queue between
    the engine and the socket. Why: the event loop's work for a streamed token runs while the
    model computes its next one, on a core the model's threads want; this path took about a
    fifth less of it (handler alone, 70 -> 55 us of CPU a token; issue 24). Several choices each
    run in a task and meet in a queue.
    """

    def __init__(self, choices: list[AsyncIterator[generation.ChoicePiece]]) -> None:
        self._choices = choices
        self._tasks: list[asyncio.Future[Any]] = []
        self._queue: asyncio.Queue[tuple[int, generation.ChoicePiece | BaseException | None]] = asyncio.Queue()
        self._running = len(choices)
        self._first_taken = False

    def start(self) -> None:
        if len(self._choices) == 1:  # its first piece is asked for now: the engine gets the prompt
            self._tasks = [asyncio.ensure_future(_next_piece(self._choices[0]))]
        else:
            self._tasks = [asyncio.ensure_future(self._produce(index, choice))
                           for index, choice in enumerate(self._choices)]

    async def _produce(self, index: int, choice: AsyncIterator[generation.ChoicePiece]) -> None:
        try:
            async with contextlib.aclosing(choice):  # type: ignore[type-var]
                async for piece in choice:
                    self._queue.put_nowait((index, piece))
            self._queue.put_nowait((index, None))
        except Exception as exc:  # handed to the reader, who raises it
            self._queue.put_nowait((index, exc))

    def __aiter__(self) -> ChoicePieces:
        return self

    async def __anext__(self) -> tuple[int, generation.ChoicePiece]:
        if len(self._choices) == 1:
            if not self._first_taken:
                self._first_taken = True
                piece = await self._tasks[0]
            else:
                piece = await anext(self._choices[0], None)
            if piece is None:
                raise StopAsyncIteration
            return 0, piece
        while self._running:
            index, item = await self._queue.get()
            if item is None:
                self._running -= 1
                continue
            if isinstance(item, BaseException):
                raise item
            return index, item
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop what still runs and wait for it (the engine streams close on the way out)."""
        await _cancel_all(self._tasks)
        if len(self._choices) == 1:
            await self._choices[0].aclose()  # type: ignore[attr-defined]


async def _next_piece(choice: AsyncIterator[generation.ChoicePiece]) -> generation.ChoicePiece | None:
    return await anext(choice, None)


async def _cancel_all(tasks: list[asyncio.Future[Any]]) -> None:
    """Cancel what is still running and wait for it (its engine streams close on the way out)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
