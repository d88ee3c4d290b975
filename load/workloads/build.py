"""The `--workload` options of `python -m load`, and the workload they describe, made ready to send.

Everything that needs the endpoint (the word-to-token scale of synthetic text, ShareGPT lengths
counted by its usage) happens here, once, in the master: workers get the finished workload.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable
from typing import Any

from load.lengths import SPEC_HELP, LengthSpec, LengthSpecError, fixed_length, parse_length
from load.prompts import (
    DISTINCT_WORDS,
    DatasetError,
    PromptPlan,
    TokenScale,
    calibrate_prompt,
    fit_token_scale,
    load_dataset,
)
from load.workloads import WORKLOAD_TYPES
from load.workloads.base import Workload
from load.workloads.dataset import DatasetWorkload
from load.workloads.multi_turn import MultiTurnWorkload
from load.workloads.shared_prefix import SharedPrefixWorkload
from load.workloads.sharegpt import ShareGPTWorkload, count_lengths, read_sharegpt
from load.workloads.synthetic import SyntheticWorkload
from load.workloads.tools import CHOICES as TOOL_CHOICES
from load.workloads.tools import SAMPLE_TOOLS, ToolsFileError, ToolsWorkload, read_tools, tool_name
from load.workloads.trace import MOONCAKE_BLOCK_TOKENS, TraceWorkload, read_trace

KINDS = tuple(WORKLOAD_TYPES)  # --workload choices: every registered workload, by its kind
DEFAULT_OUTPUT_TOKENS = 64
CountMessages = Callable[[list[dict[str, Any]]], int]


class WorkloadError(ValueError):
    """Workload options or files that cannot be used (one line, for exit 2)."""


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    """The workload group of options (--prompt-tokens, --output-tokens and --dataset are in `requests`)."""
    group = parser.add_argument_group(
        "workload", "what is sent. Lengths in tokens are the endpoint's own (counted from usage.prompt_tokens); "
                    f"a length SPEC is {SPEC_HELP}")
    group.add_argument("--workload", choices=KINDS, default=None,
                       help="synthetic: random-word prompts of --prompt-tokens/--prompt-words and --output-tokens; "
                            "dataset: --dataset JSONL of messages; sharegpt: --dataset in the ShareGPT layout "
                            "(first human turn as prompt, the answer's length as max_tokens); shared-prefix: "
                            "--groups system prompts of --prefix-tokens plus a unique --prompt-tokens suffix; "
                            "multi-turn: conversations of --turns turns carrying the history and the answers, "
                            "--think-time apart; trace: replay --trace at its recorded times; tools: "
                            "--prompt-words prompts offering function tools (--tools-file) with --tool-choice, "
                            "answered by tool calls (TTFT is the first token of any kind, a tool-call delta included) "
                            "(default: dataset with --dataset, else synthetic)")
    group.add_argument("--groups", type=int, default=8, help="shared-prefix: how many distinct system prompts")
    group.add_argument("--prefix-tokens", type=int, default=512, help="shared-prefix: tokens of each system prompt")
    group.add_argument("--turns", type=int, default=5, help="multi-turn: requests per conversation")
    group.add_argument("--think-time", type=float, default=1.0,
                       help="multi-turn: seconds a user waits after an answer before its next turn")
    group.add_argument("--trace", default=None,
                       help="trace: JSONL in the Mooncake layout, {timestamp (ms), input_length, output_length, "
                            "hash_ids} per line; requests with equal leading hash_ids share that prompt prefix")
    group.add_argument("--trace-speed", type=float, default=1.0, help="trace: replay this many times as fast")
    group.add_argument("--trace-block-tokens", type=int, default=MOONCAKE_BLOCK_TOKENS,
                       help="trace: tokens per hash_id block (Mooncake's traces: 512)")
    group.add_argument("--tools-file", default=None,
                       help="tools: a JSON array of OpenAI function tools to offer (default: three sample "
                            f"functions, {', '.join(tool_name(t) for t in SAMPLE_TOOLS)})")
    group.add_argument("--tool-choice", choices=TOOL_CHOICES, default=None,
                       help="tools: required (the default: a call is forced), auto (the model chooses text "
                            "or a call), named (each request forces one of the tools, drawn at random), none (no call)")
    group.add_argument("--dataset-limit", type=int, default=1000,
                       help="sharegpt: use the first N usable conversations (each is counted by the endpoint "
                            "once, two requests of max_tokens 1, before the run)")


def workload_kind(args: argparse.Namespace) -> str:
    """The workload asked for, with the default the options imply."""
    return args.workload or ("dataset" if args.dataset else "synthetic")


def _length(option: str, text: str | None, default: int | None) -> LengthSpec | None:
    if text is None:
        return None if default is None else fixed_length(default)
    try:
        return parse_length(str(text))
    except LengthSpecError as exc:
        raise WorkloadError(f"{option}: {exc}") from None


def _scale(count: CountMessages, seed: int) -> TokenScale:
    return fit_token_scale(lambda words: count(PromptPlan(words).messages(random.Random(seed))))


def build_workload(args: argparse.Namespace, count: CountMessages) -> Workload:
    """The workload of these options; `count` asks the endpoint for usage.prompt_tokens of messages
    (only called when a length in tokens must be planned). Raises WorkloadError, or RuntimeError
    when the endpoint cannot count."""
    kind = workload_kind(args)
    output = _length("--output-tokens", args.output_tokens, DEFAULT_OUTPUT_TOKENS)
    assert output is not None
    prompt = _length("--prompt-tokens", args.prompt_tokens, None)
    if (args.dataset is None) != (kind not in ("dataset", "sharegpt")):
        raise WorkloadError(f"--dataset goes with --workload dataset or sharegpt (got --workload {kind})"
                            if args.dataset else f"--workload {kind} needs --dataset FILE")
    if (args.trace is None) != (kind != "trace"):
        raise WorkloadError("--trace goes with --workload trace" if args.trace
                            else "--workload trace needs --trace FILE")
    for option, value in (("--tools-file", args.tools_file), ("--tool-choice", args.tool_choice)):
        if value is not None and kind != "tools":
            raise WorkloadError(f"{option} goes with --workload tools")
    if kind == "tools":
        if prompt is not None:
            raise WorkloadError("--workload tools sizes its prompts by --prompt-words (its tool definitions "
                                "ride in every prompt), not --prompt-tokens")
        try:
            tools = read_tools(args.tools_file) if args.tools_file else SAMPLE_TOOLS
        except ToolsFileError as exc:
            raise WorkloadError(str(exc)) from None
        return ToolsWorkload(output, tools=tools, choice=args.tool_choice or "required", words=args.prompt_words,
                             source=args.tools_file or "")
    try:
        if kind == "dataset":
            return DatasetWorkload(load_dataset(args.dataset), output, args.dataset)
        if kind == "sharegpt":
            if args.dataset_limit < 1:
                raise WorkloadError("--dataset-limit must be >= 1")
            explicit = _length("--output-tokens", args.output_tokens, None)
            pairs = read_sharegpt(args.dataset, args.dataset_limit)
            try:
                entries = count_lengths(pairs, count, answers=explicit is None)
            except RuntimeError as exc:  # the endpoint answers (the preflight passed) but reports no usage
                if explicit is None:
                    raise WorkloadError(f"cannot count the answers' lengths ({exc}); give --output-tokens") from None
                entries = [{"messages": [{"role": "user", "content": p["prompt"]}]} for p in pairs]
            return ShareGPTWorkload(entries, explicit, args.dataset)
        if kind == "trace":
            if args.trace_speed <= 0 or args.trace_block_tokens < 1:
                raise WorkloadError("--trace-speed must be > 0 and --trace-block-tokens >= 1")
            return TraceWorkload(read_trace(args.trace), _scale(count, args.seed), speed=args.trace_speed,
                                 block_tokens=args.trace_block_tokens, source=args.trace, seed=args.seed)
    except (OSError, DatasetError) as exc:
        raise WorkloadError(str(exc)) from None
    if kind == "shared-prefix":
        if args.groups < 1 or args.prefix_tokens < 1:
            raise WorkloadError("--groups and --prefix-tokens must be >= 1")
        return SharedPrefixWorkload(args.groups, args.prefix_tokens, prompt or fixed_length(32), output,
                                    _scale(count, args.seed), seed=args.seed)
    words, scale = args.prompt_words, None
    if prompt is not None and prompt.fixed is not None:
        plan = calibrate_prompt(prompt.fixed, lambda w: count(PromptPlan(w).messages(random.Random(args.seed))))
        words = plan.words
        if plan.words == DISTINCT_WORDS and plan.prompt_tokens is not None and plan.prompt_tokens > prompt.fixed:
            print(f"note: --prompt-tokens {prompt.fixed}: the shortest synthetic prompt that no request repeats "
                  f"counts {plan.prompt_tokens} tokens at this endpoint (its chat template and {DISTINCT_WORDS} "
                  "random words); sending those", file=sys.stderr)
    elif prompt is not None:
        scale = _scale(count, args.seed)
    if kind == "multi-turn":
        if args.turns < 1 or args.think_time < 0:
            raise WorkloadError("--turns must be >= 1 and --think-time >= 0")
        return MultiTurnWorkload(args.turns, args.think_time, output, words=words, user_tokens=prompt, scale=scale)
    return SyntheticWorkload(output, words=words, prompt_tokens=prompt, scale=scale)
