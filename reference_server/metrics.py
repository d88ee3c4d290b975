"""Prometheus metrics of the reference server (`GET /metrics`), named as vLLM names its own.

Dashboards and load tools written for vLLM find the same quantities here: each metric is vLLM's
name with the `chatspec:` prefix instead of `vllm:` (docs/metrics.md lists the pairs). What is
measured where:

- a request is *waiting* from when it is accepted (past validation and the 429 check) until its
  first token (queue and prompt evaluation included), then *running* until its answer ends;
- TTFT is from the request's arrival to its first generated token, ITL the gap between tokens of
  one choice, E2E from arrival to the end of the handler (answered requests only, as vLLM's); all
  taken as the engine hands the tokens over, so the HTTP write is not in them;
- every API answer is counted by status code, 429s and other 4xx included.

One registry per server (never prometheus_client's global one), so several apps in one process
(tests) do not collide. With several server processes sharing a port (`--workers N`), values are
kept in prometheus_client's multiprocess files and every process's /metrics answers the sum.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess

from reference_server.engines.base import Engine, GeneratedToken, SamplingParams

PREFIX = "chatspec:"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# vLLM's buckets, with a few finer ITL ones for fast engines (the mock at a few ms a token).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
               5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
               120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)

# Our metric -> the vLLM metric it mirrors (None: vLLM has no equivalent). docs/metrics.md shows it.
VLLM_EQUIVALENTS: dict[str, str | None] = {
    "chatspec:num_requests_running": "vllm:num_requests_running",
    "chatspec:num_requests_waiting": "vllm:num_requests_waiting",
    "chatspec:prompt_tokens_total": "vllm:prompt_tokens_total",
    "chatspec:generation_tokens_total": "vllm:generation_tokens_total",
    "chatspec:request_success_total": "vllm:request_success_total",
    "chatspec:time_to_first_token_seconds": "vllm:time_to_first_token_seconds",
    "chatspec:inter_token_latency_seconds": "vllm:inter_token_latency_seconds",
    "chatspec:e2e_request_latency_seconds": "vllm:e2e_request_latency_seconds",
    "chatspec:http_responses_total": None,
    "chatspec:engine_info": None,
}


class ServerMetrics:
    """The server's counters, gauges and histograms, and their text exposition."""

    def __init__(self, *, engine: str, model: str, multiprocess_dir: str | None = None) -> None:
        """`multiprocess_dir`: prometheus_client's PROMETHEUS_MULTIPROC_DIR when several server
        processes share the port (the variable must be set before prometheus_client is imported)."""
        self.multiprocess_dir = multiprocess_dir
        own = None if multiprocess_dir else CollectorRegistry()
        live = {"multiprocess_mode": "livesum"}
        self.running = Gauge(f"{PREFIX}num_requests_running", "Requests generating (first token produced).",
                             ["model_name"], registry=own, **live)
        self.waiting = Gauge(f"{PREFIX}num_requests_waiting",
                             "Requests accepted and waiting for their first token (queue and prompt).",
                             ["model_name"], registry=own, **live)
        self.prompt_tokens = Counter(f"{PREFIX}prompt_tokens", "Prompt tokens of accepted requests.",
                                     ["model_name"], registry=own)
        self.generation_tokens = Counter(f"{PREFIX}generation_tokens", "Tokens generated.", ["model_name"],
                                         registry=own)
        self.success = Counter(f"{PREFIX}request_success", "Requests answered in full, by finish reason.",
                               ["model_name", "finished_reason"], registry=own)
        self.ttft = Histogram(f"{PREFIX}time_to_first_token_seconds", "Request arrival to first token.",
                              ["model_name"], buckets=TTFT_BUCKETS, registry=own)
        self.itl = Histogram(f"{PREFIX}inter_token_latency_seconds", "Gap between tokens of one choice.",
                             ["model_name"], buckets=ITL_BUCKETS, registry=own)
        self.e2e = Histogram(f"{PREFIX}e2e_request_latency_seconds", "Request arrival to the end of its answer.",
                             ["model_name"], buckets=E2E_BUCKETS, registry=own)
        self.responses = Counter(f"{PREFIX}http_responses", "HTTP answers by status code.", ["code"],
                                 registry=own)
        info = Gauge(f"{PREFIX}engine_info", "The engine behind the API (value 1).", ["engine", "model_name"],
                     registry=own, multiprocess_mode="livemax")
        info.labels(engine=engine, model_name=model).set(1)
        # The children of this server's model, looked up once (a token must cost little) and present,
        # at 0, from the first scrape, as a scraper expects.
        self.model = model
        self.running_now, self.waiting_now = self.running.labels(model), self.waiting.labels(model)
        self.tokens_out = self.generation_tokens.labels(model)
        self.ttft_seconds, self.itl_seconds, self.e2e_seconds = (
            self.ttft.labels(model), self.itl.labels(model), self.e2e.labels(model))
        self.prompt_tokens.labels(model)
        self._registry = own

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        if self.multiprocess_dir is None:
            assert self._registry is not None
            return generate_latest(self._registry)
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
        return generate_latest(registry)

    def track(self, started: float, prompt_tokens: int) -> RequestTracker:
        """Start following one accepted request (`started`: its arrival, event-loop time)."""
        self.prompt_tokens.labels(self.model).inc(prompt_tokens)
        return RequestTracker(self, started)


class RequestTracker:
    """One request's passage from waiting to running to done."""

    def __init__(self, metrics: ServerMetrics, started: float) -> None:
        self.metrics = metrics
        self.started = started
        self.first_token: float | None = None
        self.finished = False
        self.reasons: list[str] = []  # finish reasons of the choices that ended, as the handler sees them
        metrics.waiting_now.inc()

    def token(self, now: float, previous: float | None) -> None:
        """A token of one of its choices came at `now`; `previous`: that choice's last token."""
        metrics = self.metrics
        metrics.tokens_out.inc()
        if previous is not None:
            metrics.itl_seconds.observe(now - previous)
        if self.first_token is None:
            self.first_token = now
            metrics.ttft_seconds.observe(now - self.started)
            metrics.waiting_now.dec()
            metrics.running_now.inc()

    def finish(self, now: float, choices: int) -> None:
        """The handler is done. The answer counts as a success when each of its `choices` has
        recorded its finish reason in `reasons` (not when it failed or its client left)."""
        if self.finished:
            return
        self.finished = True
        metrics = self.metrics
        (metrics.running_now if self.first_token is not None else metrics.waiting_now).dec()
        if len(self.reasons) == choices:
            metrics.e2e_seconds.observe(now - self.started)
            for reason in self.reasons:
                metrics.success.labels(metrics.model, reason).inc()


class TimedEngine(Engine):
    """The request's engine, seen through its tracker: every token it hands over is counted and timed."""

    def __init__(self, engine: Engine, tracker: RequestTracker) -> None:
        self.engine = engine
        self.tracker = tracker
        self.model_name = engine.model_name
        self.context_length = engine.context_length
        self.vocab_size = engine.vocab_size
        self.applies = engine.applies

    def tokenize_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        return self.engine.tokenize_chat(messages)

    async def stream(
        self, prompt_tokens: list[int], params: SamplingParams, cancel: threading.Event,
        started: float | None = None,
    ) -> AsyncIterator[GeneratedToken]:
        loop = asyncio.get_running_loop()
        previous = None
        tokens = self.engine.stream(prompt_tokens, params, cancel, started)
        async with contextlib.aclosing(tokens):  # type: ignore[type-var]
            async for token in tokens:
                now = loop.time()
                self.tracker.token(now, previous)
                previous = now
                yield token

    def stats(self) -> dict[str, int]:
        return self.engine.stats()
