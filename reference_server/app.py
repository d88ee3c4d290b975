"""The aiohttp application: one engine's routes under both API roots, with their middlewares."""

from __future__ import annotations

from aiohttp import web

from reference_server.config import ServerConfig
from reference_server.engines.base import Engine
from reference_server.handlers import Server
from reference_server.recording import Recorder, recording_middleware
from reference_server.transport import count_responses, error_envelope
from spec.endpoint import CHAT_SUFFIX, DEFAULT_ROOT, MODELS_SUFFIX

OPENAI_ROOT = "/v1"
ROOTS = (DEFAULT_ROOT, OPENAI_ROOT)  # the API answers under both
CHAT_PATHS = frozenset(root + CHAT_SUFFIX for root in ROOTS)

SERVER_KEY: web.AppKey[Server] = web.AppKey("server", Server)


def build_app(engine: Engine, config: ServerConfig | None = None) -> web.Application:
    """The application serving `engine`."""
    config = config or ServerConfig()
    server = Server(engine, config)
    # aiohttp's own cap sits above ours so that our check produces the envelope.
    middlewares = [count_responses(server.metrics), error_envelope]
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
