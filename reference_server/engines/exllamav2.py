"""The reference server on a GPU: exllamav2's dynamic generator (FP16 HF-format Llama directories).

Mode, chosen at start:

* paged (flash-attn >= 2.5.7 importable): one generator batches every job (continuous batching);
* unpaged (no flash-attn): exllamav2 serves one sequence at a time per generator, so
  `replicas` generators run in processes of their own on the same GPU and jobs overlap across them.

torch and exllamav2 are imported only after CUDA is confirmed, inside the backend: the first
import of exllamav2 compiles its CUDA extension (nvcc + ninja, minutes). Everything above tokens
(stop sequences, UTF-8, choices, SSE) is the server's shared code; this engine only yields tokens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import importlib.metadata
import importlib.util
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from reference_server.engines.base import Engine, GeneratedToken, SamplingParams
from reference_server.engines.exllamav2_plan import (
    JobPlan,
    LogitsProcessor,
    json_tokenizer_data,
    plan_job,
)
from reference_server.engines.exllamav2_runtime import JobEvent, ReplicaPool, TokenOut
from reference_server.engines.hf_tokenizer import ModelTokenizer
from reference_server.engines.logprobs import json_closed_by, logprobs_from_logits
from reference_server.engines.unavailable import EngineUnavailableError

log = logging.getLogger(__name__)

PAGE_SIZE = 256  # exllamav2's PAGED_PAGE_SIZE: cache lengths are multiples of it
MIN_FLASH_ATTN = (2, 5, 7)


def flash_attn_version() -> tuple[int, ...] | None:
    """The installed flash-attn version, without importing it (None when absent)."""
    if importlib.util.find_spec("flash_attn") is None:
        return None
    try:
        text = importlib.metadata.version("flash-attn")
    except importlib.metadata.PackageNotFoundError:
        return None
    parts = []
    for part in text.split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def choose_paged(paged: str, version: tuple[int, ...] | None) -> bool:
    """Paged mode for 'on', never for 'off', and for 'auto' where flash-attn is recent enough."""
    if paged == "on":
        if version is None or version < MIN_FLASH_ATTN:
            raise EngineUnavailableError("paged mode needs flash-attn >= 2.5.7, which is not installed")
        return True
    if paged == "off":
        return False
    return version is not None and version >= MIN_FLASH_ATTN


def require_cuda() -> None:
    """Refuse to start, with one plain sentence, where this engine cannot run."""
    if importlib.util.find_spec("torch") is None:
        raise EngineUnavailableError(
            "it needs a CUDA GPU with PyTorch and exllamav2 (pip install 'chatspec[gpu]' on a GPU machine); "
            "PyTorch is not installed here"
        )
    import torch

    if not torch.cuda.is_available():
        raise EngineUnavailableError(
            f"it needs a CUDA GPU, and PyTorch {torch.__version__} sees none here"
        )
    if importlib.util.find_spec("exllamav2") is None:
        raise EngineUnavailableError("exllamav2 is not installed (pip install 'chatspec[gpu]')")


def round_up(value: int, multiple: int = PAGE_SIZE) -> int:
    """value rounded up to a multiple (cache lengths must be multiples of the page size)."""
    return -(-value // multiple) * multiple


# ---- the GPU layer -------------------------------------------------------------------------------


def _processor_filter(model: Any, tokenizer: Any, processor: LogitsProcessor) -> Any:
    """An exllamav2 filter that hands each step's logits to `processor` (logit-mask path).

    Masking filters get the logits before truncation and return a new tensor, so exllamav2's
    own copy (the one it returns for logprobs) stays the model's raw output.
    """
    import torch
    from exllamav2.generator.filters import ExLlamaV2Filter

    class ProcessorFilter(ExLlamaV2Filter):
        def begin(self, prefix_str: str) -> None:
            processor.begin()

        def feed(self, token: Any) -> None:
            processor.feed(int(token.view(-1)[0]))

        def next(self) -> tuple[None, None]:
            return None, None

        def can_mask_logits(self) -> bool:
            return True

        def use_background_worker(self) -> bool:
            return False

        def prepare_logit_mask(self) -> bool:
            return True

        def mask_logits(self, logits: Any) -> Any:
            return torch.from_numpy(processor.process(logits.float().numpy()))

        def clone(self, c: Any = None) -> Any:
            return self

    return ProcessorFilter(model, tokenizer)


class ExLlamaV2Backend:
    """One exllamav2 dynamic generator (GPU-only: built inside its replica thread or process)."""

    def __init__(self, model_dir: str, *, paged: bool, max_seq_len: int, max_batch_size: int,
                 cache_tokens: int | None) -> None:
        import torch
        from exllamav2 import ExLlamaV2, ExLlamaV2Cache, ExLlamaV2Config, ExLlamaV2Tokenizer
        from exllamav2.generator import ExLlamaV2DynamicGenerator, ExLlamaV2DynamicJob, ExLlamaV2Sampler

        self._torch = torch
        self._job_class = ExLlamaV2DynamicJob
        self._settings_class = ExLlamaV2Sampler.Settings
        self.text = ModelTokenizer(model_dir)
        config = ExLlamaV2Config(model_dir)
        config.arch_compat_overrides()
        config.max_seq_len = max_seq_len
        if not paged:
            config.no_flash_attn = True
        self.model = ExLlamaV2(config)
        if paged:
            total = round_up(cache_tokens or max_batch_size * max_seq_len)
        else:
            total = round_up(max_seq_len)
            max_batch_size = 1
        cache = ExLlamaV2Cache(self.model, max_seq_len=total, lazy=True)
        self.model.load_autosplit(cache, progress=False)
        self.tokenizer = ExLlamaV2Tokenizer(config)
        self.generator = ExLlamaV2DynamicGenerator(
            model=self.model, cache=cache, tokenizer=self.tokenizer, max_batch_size=max_batch_size,
            max_seq_len=max_seq_len, paged=paged,
        )
        self.vocab_size = self.text.vocab_size
        self._jobs: dict[int, Any] = {}
        self._plans: dict[int, JobPlan] = {}
        self._json_data: Any = None
        self.generator.warmup()

    def _json_tables(self) -> Any:
        if self._json_data is None:
            self._json_data = json_tokenizer_data(self.text.pieces, sorted(self.text.eos_ids))
        return self._json_data

    def enqueue(self, job_id: int, plan: JobPlan) -> None:
        from reference_server.engines.exllamav2_plan import JsonConstraint

        filters = None
        if plan.logits is not None:
            json_factory = None
            if plan.logits.json_mode:
                schema = plan.logits.json_schema
                json_factory = functools.partial(JsonConstraint, self._json_tables(), schema)
            processor = LogitsProcessor(plan.logits, plan.prompt_tokens, self.vocab_size, json_factory)
            filters = [_processor_filter(self.model, self.tokenizer, processor)]
        job = self._job_class(
            input_ids=self._torch.tensor([plan.prompt_tokens], dtype=self._torch.long),
            max_new_tokens=plan.max_new_tokens,
            gen_settings=self._settings_class(**plan.sampler.as_kwargs()),
            seed=plan.seed,
            stop_conditions=list(plan.stop_token_ids),
            return_logits=plan.return_logits,
            filters=filters,
            identifier=job_id,
        )
        self.generator.enqueue(job)
        self._jobs[job_id] = job
        self._plans[job_id] = plan

    def cancel(self, job_id: int) -> None:
        job = self._jobs.pop(job_id, None)
        self._plans.pop(job_id, None)
        if job is not None:
            self.generator.cancel(job)

    def active_ids(self) -> list[int]:
        return list(self._jobs)

    def _tokens(self, plan: JobPlan, ids: Any, logits: Any) -> list[TokenOut]:
        token_ids = [int(t) for t in ids.view(-1).tolist()]
        if plan.return_logits and logits is not None:
            rows = logits.float().cpu().numpy().reshape(len(token_ids), -1)
            scored = logprobs_from_logits(rows, token_ids, plan.top_logprobs, self.vocab_size)
            tokens = [TokenOut(t, lp, top) for t, (lp, top) in zip(token_ids, scored, strict=True)]
        else:
            tokens = [TokenOut(t) for t in token_ids]
        stops = set(plan.stop_token_ids)
        return [t for t in tokens if t.token_id not in stops]

    def step(self) -> list[JobEvent]:
        events = []
        for result in self.generator.iterate():
            if result.get("stage") != "streaming":
                continue
            job_id = result["identifier"]
            plan = self._plans.get(job_id)
            if plan is None:
                continue
            tokens: list[TokenOut] = []
            if "token_ids" in result:
                tokens += self._tokens(plan, result["token_ids"], result.get("logits"))
            held = result.get("held") or {}
            if result["eos"] and "token_ids" in held:  # ended on a stop token with text still held
                tokens += self._tokens(plan, held["token_ids"], held.get("logits"))
            if result["eos"]:
                self._jobs.pop(job_id, None)
                self._plans.pop(job_id, None)
            if tokens or result["eos"]:
                events.append(JobEvent(job_id, tuple(tokens), done=bool(result["eos"])))
        return events

    def close(self) -> None:
        self.generator.clear_queue()
        self.model.unload()


# ---- the engine ----------------------------------------------------------------------------------


class ExLlamaV2Engine(Engine):
    """Jobs on exllamav2 generator replicas; the asyncio side of streaming and cancellation."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        model_name: str | None = None,
        max_seq_len: int = 2048,
        replicas: int = 1,
        paged: str = "auto",
        max_batch_size: int = 32,
        cache_tokens: int | None = None,
        backend_factory: Any = None,
    ) -> None:
        if backend_factory is None:
            require_cuda()  # first, so a machine without a GPU hears that and nothing else
        folder = Path(model_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"model directory not found: {folder}")
        self.text = ModelTokenizer(folder)
        self.model_name = model_name or folder.name
        self.context_length = min(max_seq_len, self.text.context_length)
        self.vocab_size = self.text.vocab_size
        self.paged = False
        if backend_factory is None:
            self.paged = choose_paged(paged, flash_attn_version())
            backend_factory = functools.partial(
                ExLlamaV2Backend, str(folder), paged=self.paged, max_seq_len=self.context_length,
                max_batch_size=max_batch_size, cache_tokens=cache_tokens,
            )
            log.info("exllamav2: %s mode, %d replica(s)", "paged" if self.paged else "unpaged", replicas)
        self._queues: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue[JobEvent]]] = {}
        self._lock = threading.Lock()
        try:
            self.pool = ReplicaPool(backend_factory, self._deliver, replicas=replicas)
        except RuntimeError as exc:
            raise EngineUnavailableError(f"the generator did not start: {exc}") from exc

    def tokenize_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        return self.text.tokenize_chat(messages)

    def _deliver(self, event: JobEvent) -> None:
        """From a replica's thread to the waiting request's event loop."""
        with self._lock:
            target = self._queues.get(event.job_id)
        if target is not None:
            loop, events = target
            loop.call_soon_threadsafe(events.put_nowait, event)

    def _generated(self, token: TokenOut) -> GeneratedToken:
        pieces = self.text.pieces
        return GeneratedToken(
            token.token_id,
            pieces[token.token_id],
            token.logprob,
            tuple((pieces[i], lp) for i, lp in token.top_logprobs),
        )

    async def stream(
        self, prompt_tokens: list[int], params: SamplingParams, cancel: threading.Event,
        started: float | None = None,
    ) -> AsyncIterator[GeneratedToken]:
        if params.max_tokens <= 0 or cancel.is_set():
            return
        if len(prompt_tokens) >= self.context_length:
            raise ValueError(f"prompt of {len(prompt_tokens)} tokens does not fit the context of "
                             f"{self.context_length}")
        room = self.context_length - len(prompt_tokens)
        if params.max_tokens > room:  # the app fits max_tokens already; a direct caller may not
            params = dataclasses.replace(params, max_tokens=room)
        plan = plan_job(prompt_tokens, params, stop_token_ids=sorted(self.text.eos_ids), vocab_size=self.vocab_size)
        events: asyncio.Queue[JobEvent] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        # The job id exists only after submit; events cannot arrive before the queue is registered
        # because the replica needs the id to produce them, and registration happens under the lock.
        with self._lock:
            job_id = self.pool.submit(plan)
            self._queues[job_id] = (loop, events)
        finished = False
        text = bytearray()
        try:
            while not cancel.is_set():
                event = await events.get()
                if event.error is not None:
                    finished = True
                    raise RuntimeError(f"generation failed: {event.error}")
                for token in event.tokens:
                    generated = self._generated(token)
                    yield generated
                    if params.json_mode:
                        text += generated.piece
                        if json_closed_by(text, generated.piece):
                            return  # the value is closed: only whitespace could follow
                if event.done:
                    finished = True
                    return
        finally:
            with self._lock:
                self._queues.pop(job_id, None)
            if not finished:
                self.pool.cancel(job_id)

    def close(self) -> None:
        self.pool.close()

