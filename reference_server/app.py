"""The aiohttp application: auth, request hygiene, and both response modes over any engine."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import aiohttp.http_exceptions
from aiohttp import web

from reference_server import generation, recording, tool_calls
from reference_server.engines.base import Engine
from reference_server.errors import ApiError
from reference_server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from reference_server.metrics import RequestTracker, ServerMetrics, TimedEngine
from reference_server.recording import Recorder, recording_middleware
from reference_server.sse import DONE_EVENT, encode_event
from reference_server.validation import ChatRequest, fit_to_context, parse_request
from spec.endpoint import CHAT_SUFFIX, DEFAULT_ROOT, MODELS_SUFFIX

OPENAI_ROOT = "/v1"
ROOTS = (DEFAULT_ROOT, OPENAI_ROOT)  # the API answers under both
CHAT_PATHS = frozenset(root + CHAT_SUFFIX for root in ROOTS)

log = logging.getLogger("reference_server")

DEFAULT_MAX_BODY_BYTES = 1 << 20
# Deeper JSON is refused before validation: recursive code (jsonschema, the grammar converter)
# would otherwise hit Python's recursion limit and answer 500. No real request comes near it.
MAX_NESTING = 64


def unusable_field(body: Any, limit: int) -> tuple[str, str] | None:
    """(top-level field, why) for a part of `body` no engine can take, or None.

    Two things pass JSON parsing and break later: nesting deeper than `limit` levels, and a lone
    UTF-16 surrogate written as an escape ("\\ud800"), which no UTF-8 text can hold. Iterative,
    so that it cannot itself run out of stack on the input it guards against.
    """
    if not isinstance(body, dict):
        return None
    for key, value in body.items():
        stack = [(key, 0), (value, 1)]
        while stack:
            item, depth = stack.pop()
            if depth > limit:
                return str(key), f"is nested more than {limit} levels deep"
            if isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return str(key).encode("utf-8", "backslashreplace").decode(), (
                        "holds a lone UTF-16 surrogate, which UTF-8 text cannot carry")
            elif isinstance(item, dict):
                stack.extend((child, depth + 1) for pair in item.items() for child in pair)
            elif isinstance(item, list):
                stack.extend((child, depth + 1) for child in item)
    return None


@dataclass
class ServerConfig:
    """Settings of one server instance."""

    api_keys: tuple[str, ...] = ()
    auth_required: bool = True
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    body_timeout_s: float = 30.0  # the whole body must arrive within this, or 408
    max_queue: int = 64
    retry_after_s: int = 1
    extra_model_names: tuple[str, ...] = field(default_factory=tuple)
    engine_label: str = ""  # the engine's name in /metrics (chatspec:engine_info); default: its class
    # prometheus_client's multiprocess folder when several server processes share the port (--workers)
    metrics_dir: str | None = None
    # the delta/message key reasoning tokens go out under: "reasoning_content" (DeepSeek, older vLLM)
    # or "reasoning" (newer vLLM); only engines that mark tokens as reasoning (the mock) send any
    reasoning_field: str = "reasoning_content"
    record_path: str | None = None  # --record: a JSON line per chat request received (reference_server.recording)


class Server:
    """Request handling for one engine."""

    def __init__(self, engine: Engine, config: ServerConfig) -> None:
        self.engine = engine
        self.config = config
        self.in_flight = 0
        self.metrics = ServerMetrics(engine=config.engine_label or type(engine).__name__, model=engine.model_name,
                                     multiprocess_dir=config.metrics_dir)
        self._keys = tuple(key.encode("utf-8") for key in config.api_keys)

    # ---- hygiene -------------------------------------------------------------------------

    def check_auth(self, request: web.Request) -> None:
        """401 unless the bearer key matches one of ours (constant-time comparison)."""
        if not self.config.auth_required:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "Missing bearer API key: send 'Authorization: Bearer <key>'.",
                type="authentication_error",
                code="missing_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        presented = token.strip().encode("utf-8")
        # Compare against every key so timing does not reveal which one (or whether any) matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(presented, key)
        if not matched:
            raise ApiError(
                401,
                "Invalid API key.",
                type="authentication_error",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    async def read_json(self, request: web.Request) -> Any:
        """The body as JSON, after Content-Type (415), size (413) and syntax (400) checks."""
        if request.content_type != "application/json":
            raise ApiError(
                415,
                f"Content-Type must be application/json, not {request.content_type or 'absent'!r}.",
                code="unsupported_media_type",
            )
        too_big = ApiError(
            413,
            f"The request body is over {self.config.max_body_bytes} bytes.",
            code="request_too_large",
        )
        if request.content_length is not None and request.content_length > self.config.max_body_bytes:
            raise too_big
        try:
            raw = await asyncio.wait_for(request.read(), self.config.body_timeout_s)
        except web.HTTPRequestEntityTooLarge as exc:
            raise too_big from exc
        except TimeoutError as exc:  # a slow or stalled sender holds a socket, never the server
            raise ApiError(408, f"The request body did not arrive within {self.config.body_timeout_s:g} s.",
                           code="request_timeout") from exc
        except (ConnectionError, aiohttp.ClientPayloadError, aiohttp.http_exceptions.HttpProcessingError) as exc:
            raise ApiError(400, f"The request body ended early: {exc}", code="incomplete_body") from exc
        if len(raw) > self.config.max_body_bytes:
            raise too_big
        try:
            # Strict UTF-8 first: json.loads(bytes) lets encoded surrogates (ED A0 80) through.
            body = json.loads(raw.decode("utf-8"))
            recording.note(body=body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(400, f"The body is not valid JSON: {exc}", code="invalid_json") from exc
        except RecursionError as exc:  # deeper than Python's decoder can go
            raise ApiError(400, "The body is nested too deeply to parse.", code="invalid_json") from exc
        unusable = unusable_field(body, MAX_NESTING)
        if unusable is not None:
            param, why = unusable
            raise ApiError(400, f"'{param}' {why}.", param=param, code="invalid_value")
        return body

    def model_names(self) -> tuple[str, ...]:
        """Names a request may use for this server's model."""
        return (self.engine.model_name, *self.config.extra_model_names)

    # ---- handlers ------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "ok", "model": self.engine.model_name, "in_flight": self.in_flight,
             "engine": self.engine.stats()}
        )

    async def prometheus(self, request: web.Request) -> web.Response:
        """Prometheus text exposition (no key needed, like /health)."""
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def models(self, request: web.Request) -> web.Response:
        self.check_auth(request)
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
        self.check_auth(request)
        body = await self.read_json(request)
        chat = parse_request(body, vocab_size=self.engine.vocab_size)
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
            prompt = self.engine.tokenize_chat(chat.messages)
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
        header = self._header(chat)
        recording.note(response_id=header["id"])
        try:
            if chat.stream:
                return await self._stream(request, chat, header, prompt, params, started, tracker, calls)
            return await self._complete(chat, header, prompt, params, started, tracker, calls)
        finally:
            self.in_flight -= 1
            tracker.finish(asyncio.get_running_loop().time(), chat.n)

    def _header(self, chat: ChatRequest) -> dict[str, Any]:
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": chat.model}

    async def _complete(
        self, chat: ChatRequest, header: dict[str, Any], prompt: list[int], params: Any, started: float,
        tracker: RequestTracker, calls: tuple[tool_calls.FunctionTool, ...] = (),
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
        completion_tokens = sum(choice.completion_tokens for choice in choices)
        reasoning_tokens = sum(choice.reasoning_tokens for choice in choices)
        tracker.reasons.extend(choice.finish_reason for choice in choices)
        body = {
            **header,
            "object": "chat.completion",
            "choices": [choice.to_api(self.config.reasoning_field) for choice in choices],
            "usage": generation.usage(len(prompt), completion_tokens, reasoning_tokens),
        }
        return web.json_response(body, dumps=_dumps)

    async def _stream(
        self, request: web.Request, chat: ChatRequest, header: dict[str, Any], prompt: list[int], params: Any,
        started: float, tracker: RequestTracker, calls: tuple[tool_calls.FunctionTool, ...] = (),
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        header = {**header, "object": "chat.completion.chunk"}
        cancel = threading.Event()
        # Every choice generates at once; their pieces are written in the order they come.
        pieces: asyncio.Queue[tuple[int, generation.ChoicePiece | BaseException | None]] = asyncio.Queue()
        states = [generation.ChoiceState(index) for index in range(chat.n)]
        engine = TimedEngine(self.engine, tracker)

        async def produce(state: generation.ChoiceState) -> None:
            try:
                choice = generation.generate_choice(engine, prompt, params, chat.stops, state, cancel, started,
                                                    calls)
                async with contextlib.aclosing(choice):
                    async for piece in choice:
                        pieces.put_nowait((state.index, piece))
                pieces.put_nowait((state.index, None))
            except Exception as exc:  # handed to the writer, which re-raises it
                pieces.put_nowait((state.index, exc))

        async def send(choices: list[dict[str, Any]], **extra: Any) -> None:
            await response.write(encode_event({**header, "choices": choices, **extra}))

        tasks: list[asyncio.Future[None]] = []
        try:
            for index in range(chat.n):
                await send([{"index": index, "delta": {"role": "assistant", "content": "", "refusal": None},
                             "finish_reason": None, "logprobs": None}])
            tasks = [asyncio.ensure_future(produce(state)) for state in states]
            running = chat.n
            while running:
                index, piece = await pieces.get()
                if piece is None:
                    running -= 1
                    continue
                if isinstance(piece, BaseException):
                    raise piece
                if piece.reasoning:
                    await send([{"index": index, "delta": {self.config.reasoning_field: piece.reasoning},
                                 "finish_reason": None, "logprobs": None}])
                if piece.tool_calls:
                    await send([{"index": index, "delta": {"tool_calls": [p.to_delta() for p in piece.tool_calls]},
                                 "finish_reason": None, "logprobs": None}])
                if piece.text or piece.logprobs:
                    await send([_chunk_choice(index, piece.text, piece.logprobs, params.logprobs)])
                if piece.finish_reason:
                    tracker.reasons.append(piece.finish_reason)
                    await send([{"index": index, "delta": {}, "finish_reason": piece.finish_reason,
                                 "logprobs": None}])
            completion_tokens = sum(state.completion_tokens for state in states)
            reasoning_tokens = sum(state.reasoning_tokens for state in states)
            await send([], usage=generation.usage(len(prompt), completion_tokens, reasoning_tokens))
            await response.write(DONE_EVENT)
            await response.write_eof()
        except (ConnectionResetError, ConnectionError) as exc:
            cancel.set()
            log.info("client went away mid-stream: %s", exc)
        finally:
            await _cancel_all(tasks)  # a failed write stops every choice's generation at once
        return response


async def _cancel_all(tasks: list[asyncio.Future[Any]]) -> None:
    """Cancel what is still running and wait for it (its engine streams close on the way out)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _chunk_choice(
    index: int, text: str, logprobs: Iterable[dict[str, Any]], with_logprobs: bool
) -> dict[str, Any]:
    return {
        "index": index,
        "delta": {"content": text},
        "finish_reason": None,
        "logprobs": {"content": list(logprobs), "refusal": None} if with_logprobs else None,
    }


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


@web.middleware
async def error_envelope(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every failure leaves in the envelope; client mistakes are 4xx, never 5xx."""
    try:
        return await handler(request)
    except ApiError as exc:
        response = exc.response()
        if exc.status == 408 or exc.code == "incomplete_body":
            response.force_close()  # what is left of that body on the socket is not a next request
        return response
    except web.HTTPRequestEntityTooLarge:
        return ApiError(413, "The request body is too large.", code="request_too_large").response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        return ApiError(
            exc.status, exc.reason or "error", type=kind, code=exc.reason.lower().replace(" ", "_")
        ).response()
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return ApiError(500, "Internal server error.", type="server_error", code="internal_error").response()


SERVER_KEY: web.AppKey[Server] = web.AppKey("server", Server)


def count_responses(server: Server) -> Any:
    """A middleware counting every API answer by status code (outside the envelope: it sees 4xx and
    5xx too); /health and /metrics, which monitors poll, are not counted."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        if request.path not in ("/health", "/metrics"):
            server.metrics.responses.labels(str(response.status)).inc()
        return response

    return middleware


def build_app(engine: Engine, config: ServerConfig | None = None) -> web.Application:
    """The application serving `engine`."""
    config = config or ServerConfig()
    server = Server(engine, config)
    # aiohttp's own cap sits above ours so that our check produces the envelope.
    middlewares = [count_responses(server), error_envelope]
    recorder = Recorder(config.record_path) if config.record_path else None
    if recorder is not None:  # outermost: it stamps arrivals first and sees every answer, refusals included
        middlewares.insert(0, recording_middleware(recorder, CHAT_PATHS))
    app = web.Application(middlewares=middlewares, client_max_size=config.max_body_bytes + 1024)
    app[SERVER_KEY] = server  # for tests and tools that need the Server behind an app
    app.router.add_get("/health", server.health)
    app.router.add_get("/metrics", server.prometheus)
    # The spec's root, and /v1 as well: where every OpenAI-compatible client looks by default.
    for root in ROOTS:
        app.router.add_get(root + MODELS_SUFFIX, server.models)
        app.router.add_post(root + CHAT_SUFFIX, server.chat_completions)

    async def close_engine(_: web.Application) -> None:
        engine.close()
        if recorder is not None:
            recorder.close()

    app.on_cleanup.append(close_engine)
    return app
