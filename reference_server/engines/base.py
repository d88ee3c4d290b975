"""The contract between the HTTP layer and a token generator.

An engine turns prompt tokens plus sampling parameters into a stream of generated tokens
(raw bytes, optional logprobs). Everything above tokens (UTF-8 assembly, stop sequences,
choices, usage, SSE) lives in `reference_server.generation`, so every engine gets it for free.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

import spec

if TYPE_CHECKING:
    from reference_server.tool_calls import FunctionTool, ToolPlan

ToolCallMode = Literal["none", "planned", "written"]

# What a parameter is when a request leaves it out: the spec's x-neutral (or documented default).
_ABSENT = {param.name: param.engine_value({}) for param in spec.default().engine_parameters()}


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings for one choice, already validated and defaulted.

    Every field but max_tokens and the JSON mode pair is a request parameter with `x-neutral` in
    spec/openapi.yaml, and defaults to the value there (neutral values switch a filter off: top_k 0,
    top_p 1.0, min_p 0.0, penalties 0/1.0). A parameter the spec gives `x-neutral` that this class
    does not name reaches the engine in `extras` (`from_request` fills both).
    """

    max_tokens: int
    temperature: float = _ABSENT["temperature"]
    top_p: float = _ABSENT["top_p"]
    top_k: int = _ABSENT["top_k"]
    min_p: float = _ABSENT["min_p"]
    frequency_penalty: float = _ABSENT["frequency_penalty"]
    presence_penalty: float = _ABSENT["presence_penalty"]
    repetition_penalty: float = _ABSENT["repetition_penalty"]
    logit_bias: Mapping[int, int] = field(default_factory=dict)
    seed: int | None = _ABSENT["seed"]
    logprobs: bool = _ABSENT["logprobs"]
    top_logprobs: int = _ABSENT["top_logprobs"]
    json_mode: bool = False
    json_schema: dict[str, Any] | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def named_parameters(cls, api: spec.ApiSpec) -> frozenset[str]:
        """The spec parameters that reach the engine (`x-neutral`) under a field of their own here
        (the rest arrive in `extras`)."""
        return frozenset(item.name for item in fields(cls)) & {param.name for param in api.engine_parameters()}

    @classmethod
    def from_request(cls, body: dict[str, Any], api: spec.ApiSpec, **given: Any) -> SamplingParams:
        """The params of a validated request `body`: every `x-neutral` parameter of `api` (absent or
        null: its neutral value), then `given` (what needs more than a type: max_tokens, logit_bias)."""
        named = cls.named_parameters(api)
        values: dict[str, Any] = {}
        extras: dict[str, Any] = {}
        for param in api.engine_parameters():
            (values if param.name in named else extras)[param.name] = param.engine_value(body)
        return cls(**{**values, **given}, extras=extras)


# Every spec parameter SamplingParams has a field for: what an engine that applies them all declares.
NAMED_PARAMETERS = SamplingParams.named_parameters(spec.default())


@dataclass(frozen=True)
class GeneratedToken:
    """One sampled token. `logprob`/`top_logprobs` are set only when logprobs were asked for.

    `top_logprobs` holds (token bytes, logprob) pairs, most likely first, from the model's
    distribution before any sampling filter. `reasoning`: the token is part of the model's
    reasoning, sent apart from the answer's content (only the mock sets it, to imitate
    reasoning models for load tools).
    """

    token_id: int
    piece: bytes
    logprob: float | None = None
    top_logprobs: tuple[tuple[bytes, float], ...] = ()
    reasoning: bool = False


class Engine(ABC):
    """A token generator serving one model."""

    model_name: str
    context_length: int
    vocab_size: int
    # How the engine makes tool calls (the openai profile's `tools`). "none": it cannot, and answers a
    # request with tools with a 400 naming tools, so a client sees the feature as not offered.
    # "planned": the engine decides the calls (`plan_calls`) and each one's arguments are generated in
    # JSON mode against its function's parameters. "written": the model is offered the tools in its
    # prompt and writes a call as JSON text, under a grammar when the request forces one.
    tool_calls: ToolCallMode = "none"
    # The spec parameters (those with `x-neutral`, in SamplingParams) the engine acts on. The server
    # warns at startup about, and /health lists, any other such parameter: it is validated and
    # accepted, then ignored, and that must be visible.
    applies: frozenset[str] = frozenset()

    def ignored_parameters(self, api: spec.ApiSpec) -> tuple[str, ...]:
        """The parameters of `api` that reach this engine but that it does not apply, in spec order."""
        return tuple(param.name for param in api.engine_parameters() if param.name not in self.applies)

    def plan_calls(self, plan: ToolPlan) -> tuple[FunctionTool, ...]:
        """The functions this answer calls (empty: it answers in text). Only "planned" engines."""
        raise NotImplementedError(f"{type(self).__name__} does not plan tool calls")

    @abstractmethod
    def tokenize_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        """Prompt tokens for a chat, with the model's chat template and generation prompt."""

    @abstractmethod
    def stream(
        self, prompt_tokens: list[int], params: SamplingParams, cancel: threading.Event,
        started: float | None = None,
    ) -> AsyncIterator[GeneratedToken]:
        """Generate up to `params.max_tokens` tokens; ends early at end-of-sequence or `cancel`.

        `started` is when the request arrived (event-loop time, `loop.time()`): engines with
        scripted timing (the mock) count their time to first token from it, as a client does.
        Several calls may run at once (the n choices of a request run concurrently).
        """

    def close(self) -> None:  # noqa: B027 - optional hook, most engines hold nothing to release
        """Release model resources (optional)."""

    def stats(self) -> dict[str, int]:
        """What the engine is doing, for /health: e.g. sequences running, tokens generated so far."""
        return {}
