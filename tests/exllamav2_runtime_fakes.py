"""A CPU stand-in for the runtime's backend (where `ExLlamaV2Backend` sits): the engine's plumbing, no GPU.

It honours what a `JobPlan` asks of a backend: max_new_tokens, stop tokens, seeds, logits for
logprobs, and the logits processor (bias, penalties, JSON) exactly as the GPU backend wires it.
Tokens come from a seeded random walk over a small set of ordinary word tokens.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import numpy as np

from reference_server.engines.exllamav2_plan import JobPlan, LogitsProcessor
from reference_server.engines.exllamav2_runtime import JobEvent, TokenOut
from reference_server.engines.logprobs import logprobs_from_logits


@dataclass
class _Job:
    plan: JobPlan
    rng: random.Random
    processor: LogitsProcessor | None
    produced: int = 0
    started: bool = False
    sequence: list[int] = field(default_factory=list)


class FakeBackend:
    """Steps every job one token per step (like a paged generator's batch), optionally slowly."""

    def __init__(self, vocab_size: int = 49152, *, words: tuple[int, ...] = (), step_s: float = 0.0,
                 end_token: int | None = None, end_after: int | None = None, fail_on_step: int | None = None) -> None:
        self.vocab_size = vocab_size
        self.words = words or tuple(range(300, 340))
        self.step_s = step_s
        self.end_token = end_token
        self.end_after = end_after
        self.fail_on_step = fail_on_step
        self.steps = 0
        self.jobs: dict[int, _Job] = {}
        self.max_concurrent = 0
        self.cancelled: list[int] = []

    def enqueue(self, job_id: int, plan: JobPlan) -> None:
        if len(plan.prompt_tokens) > 4000:
            raise ValueError("prompt too long for the fake")
        processor = LogitsProcessor(plan.logits, plan.prompt_tokens, self.vocab_size) \
            if plan.logits is not None and not plan.logits.json_mode else None
        seed = plan.seed if plan.seed is not None else random.getrandbits(32)
        self.jobs[job_id] = _Job(plan, random.Random(seed), processor)
        self.max_concurrent = max(self.max_concurrent, len(self.jobs))

    def cancel(self, job_id: int) -> None:
        if self.jobs.pop(job_id, None) is not None:
            self.cancelled.append(job_id)

    def active_ids(self) -> list[int]:
        return list(self.jobs)

    def _logits(self, job: _Job) -> np.ndarray:
        logits = np.full(self.vocab_size, -20.0, dtype=np.float32)
        for i, word in enumerate(self.words):
            logits[word] = job.rng.gauss(0.0, 1.0) + (0.5 if i % 3 == 0 else 0.0)
        return logits

    def step(self) -> list[JobEvent]:
        self.steps += 1
        if self.fail_on_step is not None and self.steps == self.fail_on_step:
            raise RuntimeError("simulated CUDA error")
        if self.step_s:
            time.sleep(self.step_s)
        events = []
        for job_id, job in list(self.jobs.items()):
            if not job.started and job.processor is not None:
                job.processor.begin()
            job.started = True
            raw = self._logits(job)
            logits = job.processor.process(raw) if job.processor is not None else raw
            token = int(np.argmax(logits))
            if self.end_after is not None and job.produced >= self.end_after and self.end_token is not None:
                token = self.end_token
            if job.processor is not None:
                job.processor.feed(token)
            job.produced += 1
            job.sequence.append(token)
            stop = token in job.plan.stop_token_ids
            done = stop or job.produced >= job.plan.max_new_tokens
            tokens: tuple[TokenOut, ...] = ()
            if not stop:
                if job.plan.return_logits:
                    ((lp, top),) = logprobs_from_logits(raw[None, :], [token], job.plan.top_logprobs, self.vocab_size)
                    tokens = (TokenOut(token, lp, top),)
                else:
                    tokens = (TokenOut(token),)
            if done:
                del self.jobs[job_id]
            events.append(JobEvent(job_id, tokens, done=done))
        return events

    def close(self) -> None:
        self.jobs.clear()


def make_fake(**kwargs: object) -> FakeBackend:
    """Picklable factory target for process replicas."""
    return FakeBackend(**kwargs)  # type: ignore[arg-type]


def failing_factory() -> FakeBackend:
    """A backend that cannot start (like a model that does not fit the GPU)."""
    raise MemoryError("CUDA out of memory (simulated)")
