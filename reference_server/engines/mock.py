"""A model-free engine with set time-to-first-token and inter-token gaps.

It is the ground truth for calibrating load generators (its latencies are known exactly), and
it lets the HTTP layer be tested fast. It is a real, if tiny, language model: each step draws
from a deterministic distribution over a small vocabulary that depends on the prompt and the
previous token, so seed, temperature, top_k/top_p/min_p, penalties, logit_bias and logprobs
all behave as they would with a real model.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import random
import re
import signal
import threading
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from reference_server.engines.base import NAMED_PARAMETERS, Engine, GeneratedToken, SamplingParams, ToolCallMode
from reference_server.engines.logprobs import logprobs_from_logits
from reference_server.engines.timer import DeadlineTimer
from reference_server.tool_calls import FunctionTool, ToolPlan

# Words and punctuation, several multi-byte (é, ü, 日本, emoji) so UTF-8 handling is exercised.
VOCAB: tuple[str, ...] = (
    "<eos>", " the", " a", " cat", " dog", " sat", " on", " mat", " and", " then", " ran",
    " away", ".", ",", "!", "?", "\n", " Hello", " world", " café", " über", " 日本", " 🙂",
    " is", " was", " very", " quick", " brown", " fox", " jumps", " over", " lazy", " one",
    " two", " three", " four", " five", " red", " green", " blue", " yes", " no", " maybe",
    " I", " you", " we", " they", " it", " said", " think", " know", " see", " big", " small",
    " old", " new", " good", " bad", " day", " night", " time", " way", " home", " end",
)
EOS_ID = 0
# Faults the mock can inject, for testing clients and the server's start-up check.
FAULTS = ("none", "raise", "segfault", "stall")
_WORD = re.compile(r"\s*\S+|\s+")


def _stable_hash(*parts: object) -> int:
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def minimal_instance(schema: dict[str, Any]) -> Any:
    """A small value valid against common JSON Schemas (what the mock answers in JSON mode)."""
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: minimal_instance(props.get(name, {})) for name in schema.get("required", [])}
    if kind == "array":
        count = schema.get("minItems", 0)
        return [minimal_instance(schema.get("items", {})) for _ in range(count)]
    if kind == "string":
        return "x" * max(schema.get("minLength", 0), 1 if schema.get("minLength") else 0)
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1)
        return int(math.ceil(low)) if kind == "integer" else float(low)
    if kind == "boolean":
        return True
    return None


class MockEngine(Engine):
    """Deterministic tokens at `ttft_ms` before the first and `itl_ms` between the next ones."""

    applies = NAMED_PARAMETERS

    def __init__(
        self,
        *,
        model_name: str = "mock",
        ttft_ms: float = 0.0,
        itl_ms: float = 0.0,
        context_length: int = 2048,
        fault: str = "none",
        fault_at: int = 1,
        slots: int = 0,
        reasoning_tokens: int = 0,
    ) -> None:
        """`slots`: at most this many streams generate at once (0: no limit); the others wait in
        arrival order and their time to first token counts from when they get a slot, so past
        `slots` concurrent requests the queue (and the TTFT) grows like a real server's.

        `reasoning_tokens`: the first N tokens of each answer are reasoning (a reasoning model's
        shape, for testing how load tools time it), on the same deadlines as the rest; JSON-mode
        answers have none."""
        if slots < 0:
            raise ValueError("slots must be >= 0")
        if reasoning_tokens < 0:
            raise ValueError("reasoning_tokens must be >= 0")
        self.reasoning_tokens = reasoning_tokens
        if fault not in FAULTS:
            raise ValueError(f"unknown mock fault {fault!r}; expected one of {FAULTS}")
        self.model_name = model_name
        self.fault = fault
        self.fault_at = fault_at
        self.generations = 0
        self.running = 0  # streams generating now
        self.waiting = 0  # streams waiting for a slot
        self.slots = slots
        self._slot_free: asyncio.Semaphore | None = None
        self.tokens_generated = 0
        self.ttft_s = ttft_ms / 1000.0
        self.itl_s = itl_ms / 1000.0
        self.context_length = context_length
        self.vocab_size = len(VOCAB)
        self._pieces = [word.encode("utf-8") for word in VOCAB]
        self._timer = DeadlineTimer()

    tool_calls: ToolCallMode = "planned"

    def plan_calls(self, plan: ToolPlan) -> tuple[FunctionTool, ...]:
        """What the request forces (the named function; with required, one call per tool when parallel
        calls are allowed); with auto, a call to the first tool; with none, text."""
        if plan.choice == "auto":
            return plan.tools[:1]
        return plan.forced()

    def tokenize_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        tokens: list[int] = []
        for message in messages:
            content = message.get("content") or ""
            if isinstance(content, list):
                content = "".join(part.get("text", "") for part in content)
            text = f"<{message.get('role', 'user')}> {content}\n"
            tokens.extend(_stable_hash(w) % (self.vocab_size - 1) + 1 for w in _WORD.findall(text))
        return tokens + [EOS_ID]  # the generation prompt

    def _logits(self, context_key: int, previous: int, step: int) -> list[float]:
        rng = random.Random(_stable_hash(context_key, previous, step % 7))
        logits = [rng.gauss(0.0, 2.0) for _ in range(self.vocab_size)]
        logits[EOS_ID] = -3.0 + 0.05 * step  # ends now and then, more often as text grows
        return logits

    def _sample(
        self,
        logits: list[float],
        params: SamplingParams,
        generated: Counter[int],
        seen: set[int],
        rng: random.Random,
    ) -> int:
        adjusted = list(logits)
        for token in seen:
            if params.repetition_penalty != 1.0:
                value = adjusted[token]
                p = params.repetition_penalty
                adjusted[token] = value / p if value > 0 else value * p
        for token, count in generated.items():
            adjusted[token] -= count * params.frequency_penalty + params.presence_penalty
        for token, bias in params.logit_bias.items():
            adjusted[token] = -math.inf if bias <= -100 else adjusted[token] + bias
        # Extreme but valid settings (repetition_penalty 5e-324) must not overflow the weights.
        adjusted = [x if x == -math.inf else max(-1e6, min(1e6, x)) for x in adjusted]
        order = sorted(range(self.vocab_size), key=lambda i: adjusted[i], reverse=True)
        order = [i for i in order if adjusted[i] != -math.inf] or [EOS_ID]
        if params.top_k > 0:
            order = order[: params.top_k]
        top = adjusted[order[0]]
        weights = [math.exp((adjusted[i] - top) / params.temperature) for i in order]
        total = sum(weights)
        probs = [w / total for w in weights]
        keep = []
        mass = 0.0
        for i, p in zip(order, probs, strict=True):
            if params.min_p > 0 and p < params.min_p * probs[0]:
                break
            keep.append((i, p))
            mass += p
            if mass >= params.top_p:
                break
        ids, ps = zip(*keep, strict=True)
        return rng.choices(ids, weights=ps, k=1)[0]

    def _json_pieces(self, params: SamplingParams) -> list[bytes]:
        value = minimal_instance(params.json_schema) if params.json_schema else {"answer": "mock"}
        text = json.dumps(value)
        return [text[i : i + 3].encode("utf-8") for i in range(0, len(text), 3)]

    async def _pace(self, start: float, index: int) -> None:
        """Sleep until token `index` is due: start + ttft + index * itl, from when the request came.

        Deadlines, not relative sleeps, so per-token work and timer overshoot never accumulate:
        the gaps a client sees are the configured truth a load generator is calibrated against.
        """
        await self._timer.sleep_until(start + self.ttft_s + index * self.itl_s)

    def _inject_fault(self) -> bool:
        """The fault asked for, once this generation's number reaches `fault_at`; True: stall it."""
        self.generations += 1
        if self.fault == "none" or self.generations < self.fault_at:
            return False
        if self.fault == "stall":  # the first token, then nothing until the consumer gives up
            return True
        if self.fault == "segfault":  # dies as a native crash does: killed by the signal, no cleanup
            os.kill(os.getpid(), signal.SIGSEGV)
        raise RuntimeError(f"mock fault: generation {self.generations} fails on purpose (--mock-fault raise)")

    async def stream(
        self, prompt_tokens: list[int], params: SamplingParams, cancel: threading.Event,
        started: float | None = None,
    ) -> AsyncIterator[GeneratedToken]:
        stall = self._inject_fault()
        async with self._slot() as got_slot_at:
            self.running += 1
            try:
                if got_slot_at is not None:  # it waited: the scripted times count from when a slot was free
                    started = got_slot_at
                generated = self._generate(prompt_tokens, params, cancel, started, stall)
                async with contextlib.aclosing(generated) as tokens:
                    async for token in tokens:
                        self.tokens_generated += 1
                        yield token
            finally:
                self.running -= 1

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[float | None]:
        """One of `slots` generation slots (FIFO: asyncio.Semaphore wakes waiters in order); yields
        when the slot was got if the stream had to wait for it, else None."""
        if not self.slots:
            yield None
            return
        if self._slot_free is None:
            self._slot_free = asyncio.Semaphore(self.slots)
        waited = self._slot_free.locked()
        self.waiting += 1
        try:
            await self._slot_free.acquire()
        finally:
            self.waiting -= 1
        try:
            yield asyncio.get_running_loop().time() if waited else None
        finally:
            self._slot_free.release()

    def stats(self) -> dict[str, int]:
        return {"running": self.running, "waiting": self.waiting, "tokens_generated": self.tokens_generated,
                **({"slots": self.slots} if self.slots else {})}

    async def _generate(
        self, prompt_tokens: list[int], params: SamplingParams, cancel: threading.Event, started: float | None,
        stall: bool,
    ) -> AsyncIterator[GeneratedToken]:
        # Counted from the request's arrival, as a client counts; every choice of a request runs
        # at the same time, so each has the same time to first token.
        start = started if started is not None else asyncio.get_running_loop().time()
        if params.json_mode:
            for count, piece in enumerate(self._json_pieces(params)[: params.max_tokens]):
                if cancel.is_set():
                    return
                await self._pace(start, count)
                yield GeneratedToken(-1, piece, 0.0 if params.logprobs else None)
            return
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        rng = random.Random(seed)
        context_key = _stable_hash(tuple(prompt_tokens))
        previous = EOS_ID
        generated: Counter[int] = Counter()
        seen = set(prompt_tokens)
        for step in range(params.max_tokens):
            if cancel.is_set():
                return
            logits = self._logits(context_key, previous, step)
            token = self._sample(logits, params, generated, seen, rng)
            if token == EOS_ID:
                return
            logprob = None
            top: tuple[tuple[bytes, float], ...] = ()
            if params.logprobs:
                ((logprob, best),) = logprobs_from_logits([logits], [token], params.top_logprobs, self.vocab_size)
                top = tuple((self._pieces[i], lp) for i, lp in best)
            await self._pace(start, step)  # the token's work is done: it goes out on its deadline
            if stall and step == 1:
                await asyncio.Event().wait()  # forever: only the consumer's cancellation ends it
            yield GeneratedToken(token, self._pieces[token], logprob, top, reasoning=step < self.reasoning_tokens)
            generated[token] += 1
            seen.add(token)
            previous = token
