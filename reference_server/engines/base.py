"""The contract between the HTTP layer and a token generator.

An engine turns prompt tokens plus sampling parameters into a stream of generated tokens
(raw bytes, optional logprobs). Everything above tokens (UTF-8 assembly, stop sequences,
choices, usage, SSE) lives in `reference_server.generation`, so every engine gets it for free.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

# When the HTTP handler began on this request (event-loop time): engines with scripted timing
# (the mock) measure their time to first token from here, as a client does, not from when
# validation and tokenization were over.
REQUEST_STARTED: contextvars.ContextVar[float | None] = contextvars.ContextVar("request_started", default=None)


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings for one choice, already validated and defaulted.

    Neutral values switch a filter off: top_k 0, top_p 1.0, min_p 0.0, penalties 0/1.0.
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: Mapping[int, int] = field(default_factory=dict)
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    json_mode: bool = False
    json_schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class GeneratedToken:
    """One sampled token. `logprob`/`top_logprobs` are set only when logprobs were asked for.

    `top_logprobs` holds (token bytes, logprob) pairs, most likely first, from the model's
    distribution before any sampling filter.
    """

    token_id: int
    piece: bytes
    logprob: float | None = None
    top_logprobs: tuple[tuple[bytes, float], ...] = ()


class Engine(ABC):
    """A token generator serving one model."""

    model_name: str
    context_length: int
    vocab_size: int

    @abstractmethod
    def tokenize_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        """Prompt tokens for a chat, with the model's chat template and generation prompt."""

    @abstractmethod
    def stream(
        self, prompt_tokens: list[int], params: SamplingParams, cancel: threading.Event
    ) -> AsyncIterator[GeneratedToken]:
        """Generate up to `params.max_tokens` tokens; ends early at end-of-sequence or `cancel`."""

    def close(self) -> None:  # noqa: B027 - optional hook, most engines hold nothing to release
        """Release model resources (optional)."""


_DONE = object()


class BlockingEngine(Engine):
    """An engine whose model runs a blocking loop: it runs on one worker thread, off the event loop.

    One thread because a llama.cpp context is not thread-safe; requests queue for it in order.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")

    @abstractmethod
    def generate_blocking(
        self, prompt_tokens: list[int], params: SamplingParams, cancel: threading.Event
    ) -> Iterator[GeneratedToken]:
        """The blocking generation loop; must check `cancel` before every token."""

    async def stream(
        self, prompt_tokens: list[int], params: SamplingParams, cancel: threading.Event
    ) -> AsyncIterator[GeneratedToken]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        # This call's own stop signal: ending one choice must not cancel the request's next choice.
        stop = threading.Event()

        def worker() -> None:
            try:
                for token in self.generate_blocking(prompt_tokens, params, stop):
                    loop.call_soon_threadsafe(queue.put_nowait, token)
                    if stop.is_set():
                        break
            except BaseException as exc:  # handed to the consumer, which re-raises it
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        future = loop.run_in_executor(self._executor, worker)
        try:
            while not cancel.is_set():
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            # The consumer stopped early (stop sequence, disconnect) or finished: stop the worker.
            stop.set()
            await asyncio.shield(future)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
