"""The exllamav2 engine on a real GPU (skipped without CUDA): the converted SmolLM2 and a tiny random model."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from reference_server import generation
from reference_server.engines.base import SamplingParams

pytestmark = pytest.mark.gpu

CHAT = [{"role": "user", "content": "Write one sentence about cats."}]


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from reference_server.engines.llamacpp import default_model_path
    from reference_server.models.gguf_to_hf import convert

    out = tmp_path_factory.mktemp("smollm2-hf")
    convert(default_model_path(), out)
    return out


@pytest.fixture(scope="module")
def engine(smollm2_dir: Path) -> Iterator[object]:
    from reference_server.engines.exllamav2 import ExLlamaV2Engine

    engine = ExLlamaV2Engine(smollm2_dir, model_name="smollm2", max_seq_len=2048)
    yield engine
    engine.close()


def _complete(engine: object, params: SamplingParams, index: int = 0) -> generation.CompletedChoice:
    prompt = engine.tokenize_chat(CHAT)  # type: ignore[attr-defined]
    return asyncio.run(generation.complete_choice(engine, prompt, params, [], index, threading.Event()))  # type: ignore[arg-type]


def test_greedy_output_is_english_and_repeatable(engine: object) -> None:
    first = _complete(engine, SamplingParams(max_tokens=24, temperature=0.0))
    second = _complete(engine, SamplingParams(max_tokens=24, temperature=0.0))
    assert first.text == second.text and "cat" in first.text.lower()


def test_seeded_sampling_repeats(engine: object) -> None:
    params = SamplingParams(max_tokens=24, temperature=0.9, top_p=0.95, seed=42)
    assert _complete(engine, params).text == _complete(engine, params).text


def test_logprobs_and_json_mode(engine: object) -> None:
    choice = _complete(engine, SamplingParams(max_tokens=8, logprobs=True, top_logprobs=3, seed=1))
    assert choice.logprobs and all(e["logprob"] <= 0 and len(e["top_logprobs"]) == 3 for e in choice.logprobs)
    choice = _complete(engine, SamplingParams(max_tokens=80, json_mode=True, seed=1))
    assert isinstance(json.loads(choice.text), dict)


def test_concurrent_requests_overlap(engine: object) -> None:
    async def many() -> list[generation.CompletedChoice]:
        prompt = engine.tokenize_chat(CHAT)  # type: ignore[attr-defined]
        return await asyncio.gather(*(
            generation.complete_choice(engine, prompt, SamplingParams(max_tokens=16, seed=i), [], 0,  # type: ignore[arg-type]
                                       threading.Event())
            for i in range(8)
        ))

    assert all(c.completion_tokens > 0 for c in asyncio.run(many()))


def test_tiny_random_model_runs_unpaged_replicas(tmp_path: Path) -> None:
    from reference_server.engines.exllamav2 import ExLlamaV2Engine
    from reference_server.engines.llamacpp import default_model_path
    from reference_server.models.random_llama import make_random

    make_random("tiny", tmp_path, default_model_path())
    engine = ExLlamaV2Engine(tmp_path, paged="off", replicas=2, max_seq_len=512)
    try:
        choice = _complete(engine, SamplingParams(max_tokens=10, seed=3))
        assert choice.completion_tokens >= 1
    finally:
        engine.close()
