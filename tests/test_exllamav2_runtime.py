"""The exllamav2 engine's plumbing on the CPU: replicas, streaming, cancel, errors, the HTTP API.

A fake backend (tests/exllamav2_runtime_fakes.py) stands in for the GPU generator; everything between
the HTTP layer and the backend's `step()` is the real code.
"""

from __future__ import annotations

import asyncio
import functools
import json
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from exllamav2_runtime_fakes import FakeBackend, failing_factory, make_fake

from reference_server import generation
from reference_server.app import build_app
from reference_server.config import ServerConfig
from reference_server.engines.base import SamplingParams
from reference_server.engines.exllamav2 import ExLlamaV2Engine, choose_paged, round_up
from reference_server.engines.exllamav2_plan import plan_job
from reference_server.engines.exllamav2_runtime import JobEvent, ReplicaPool
from reference_server.engines.unavailable import EngineUnavailableError

pytest.importorskip("tokenizers")
pytest.importorskip("gguf")

CHAT = [{"role": "user", "content": "Say something."}]



@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend(step_s=0.001)


@pytest.fixture
def engine(model_dir: Path, fake: FakeBackend) -> Iterator[ExLlamaV2Engine]:
    engine = ExLlamaV2Engine(model_dir, model_name="fake", backend_factory=lambda: fake)
    yield engine
    engine.close()


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _complete(engine: ExLlamaV2Engine, params: SamplingParams, stops: list[str] | None = None,
                    index: int = 0) -> generation.CompletedChoice:
    prompt = engine.tokenize_chat(CHAT)
    return await generation.complete_choice(engine, prompt, params, stops or [], index, threading.Event())


def test_tokens_stream_to_a_choice(engine: ExLlamaV2Engine) -> None:
    choice = _run(_complete(engine, SamplingParams(max_tokens=12, seed=5)))
    assert choice.completion_tokens == 12 and choice.finish_reason == "length" and choice.text
    again = _run(_complete(engine, SamplingParams(max_tokens=12, seed=5)))
    assert again.text == choice.text  # the seed reaches the job
    other = _run(_complete(engine, SamplingParams(max_tokens=12, seed=6)))
    assert other.text != choice.text


def test_stop_sequence_uses_the_shared_logic(engine: ExLlamaV2Engine) -> None:
    full = _run(_complete(engine, SamplingParams(max_tokens=12, seed=5)))
    stop = full.text[5:8]
    cut = _run(_complete(engine, SamplingParams(max_tokens=12, seed=5), stops=[stop]))
    assert cut.finish_reason == "stop" and cut.text.endswith(stop) and full.text.startswith(cut.text)


def test_end_token_ends_the_choice(model_dir: Path) -> None:
    fake = FakeBackend(end_token=2, end_after=3)
    engine = ExLlamaV2Engine(model_dir, backend_factory=lambda: fake)
    try:
        choice = _run(_complete(engine, SamplingParams(max_tokens=20, seed=1)))
    finally:
        engine.close()
    assert choice.completion_tokens == 3 and choice.finish_reason == "stop"


def test_logprobs_and_bias_reach_the_tokens(engine: ExLlamaV2Engine, fake: FakeBackend) -> None:
    choice = _run(_complete(engine, SamplingParams(max_tokens=6, seed=2, logprobs=True, top_logprobs=3)))
    assert choice.logprobs is not None and len(choice.logprobs) == 6
    for entry in choice.logprobs:
        assert entry["logprob"] <= 0 and len(entry["top_logprobs"]) == 3
        assert bytes(entry["bytes"]).decode("utf-8", "replace") == entry["token"]
    forced = fake.words[7]
    choice = _run(_complete(engine, SamplingParams(max_tokens=4, seed=2, logit_bias={forced: 100})))
    assert choice.text == engine.text.decode([forced] * 4)


def test_cancel_stops_the_job(model_dir: Path) -> None:
    fake = FakeBackend(step_s=0.01)
    engine = ExLlamaV2Engine(model_dir, backend_factory=lambda: fake)

    async def take_three() -> None:
        tokens = engine.stream(engine.tokenize_chat(CHAT), SamplingParams(max_tokens=10_000), threading.Event())
        for _ in range(3):
            await anext(tokens)
        await tokens.aclose()

    try:
        _run(take_three())
        deadline = time.monotonic() + 5
        while fake.jobs and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fake.jobs == {} and len(fake.cancelled) == 1
        assert engine.pool.loads() == [0]
    finally:
        engine.close()


def test_a_failed_step_fails_its_jobs_and_the_loop_goes_on(model_dir: Path) -> None:
    fake = FakeBackend(fail_on_step=2)
    engine = ExLlamaV2Engine(model_dir, backend_factory=lambda: fake)
    try:
        with pytest.raises(RuntimeError, match="simulated CUDA error"):
            _run(_complete(engine, SamplingParams(max_tokens=5)))
        assert _run(_complete(engine, SamplingParams(max_tokens=5))).completion_tokens == 5
    finally:
        engine.close()


def test_a_generator_that_cannot_start_is_reported(model_dir: Path) -> None:
    with pytest.raises(EngineUnavailableError, match="out of memory"):
        ExLlamaV2Engine(model_dir, backend_factory=failing_factory)


def test_n_choices_run_as_concurrent_jobs_over_http(engine: ExLlamaV2Engine, fake: FakeBackend) -> None:
    async def scenario() -> dict[str, Any]:
        app = build_app(engine, ServerConfig(auth_required=False))
        async with TestClient(TestServer(app)) as client:
            body = {"model": "fake", "messages": CHAT, "max_tokens": 8, "n": 3, "seed": 11, "stream": False}
            response = await client.post("/v3/openai/chat/completions", json=body)
            assert response.status == 200, await response.text()
            data = await response.json()
            body["stream"] = True
            chunks = []
            async with client.post("/v3/openai/chat/completions", json=body) as streamed:
                async for line in streamed.content:
                    if line.startswith(b"data: {"):
                        chunks.append(json.loads(line[6:]))
            data["streamed"] = chunks
            # Separate requests overlap on the generator (the app runs a request's n choices in turn).
            single = {**body, "n": 1, "stream": False, "max_tokens": 30}
            replies = await asyncio.gather(*(client.post("/v3/openai/chat/completions", json=single)
                                             for _ in range(3)))
            assert [r.status for r in replies] == [200] * 3
            return data

    data = _run(scenario())
    texts = [c["message"]["content"] for c in data["choices"]]
    assert len(set(texts)) == 3  # seed + i per choice
    assert data["usage"]["completion_tokens"] == 24
    assert fake.max_concurrent >= 2
    streamed = {i: "" for i in range(3)}
    for chunk in data["streamed"]:
        for choice in chunk["choices"]:
            streamed[choice["index"]] += choice["delta"].get("content") or ""
    assert [streamed[i] for i in range(3)] == texts  # streamed and whole answers agree


def test_process_replicas_share_the_jobs(model_dir: Path) -> None:
    events: queue.Queue[JobEvent] = queue.Queue()
    pool = ReplicaPool(functools.partial(make_fake, step_s=0.005), events.put, replicas=2)
    try:
        params = SamplingParams(max_tokens=20, seed=1)
        ids = [pool.submit(plan_job([1, 2, 3], params, stop_token_ids=[2], vocab_size=49152)) for _ in range(4)]
        assert pool.loads() == [2, 2]
        counts = dict.fromkeys(ids, 0)
        finished: set[int] = set()
        while len(finished) < 4:
            event = events.get(timeout=60)
            assert event.error is None
            counts[event.job_id] += len(event.tokens)
            if event.done:
                finished.add(event.job_id)
        assert counts == dict.fromkeys(ids, 20) and pool.loads() == [0, 0]
    finally:
        pool.close()


def test_process_replica_start_failure() -> None:
    with pytest.raises(RuntimeError, match="out of memory"):
        ReplicaPool(failing_factory, lambda event: None, replicas=2)


def test_mode_choice_and_cache_rounding() -> None:
    assert choose_paged("auto", (2, 8, 3)) is True
    assert choose_paged("auto", (2, 5, 6)) is False and choose_paged("auto", None) is False
    assert choose_paged("off", (2, 8, 3)) is False
    with pytest.raises(EngineUnavailableError):
        choose_paged("on", None)
    assert (round_up(2048), round_up(2049), round_up(1)) == (2048, 2304, 256)

