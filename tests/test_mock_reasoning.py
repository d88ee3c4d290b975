"""The mock engine as a reasoning model (`--mock-reasoning-tokens N`): the first N tokens of each
answer go out as reasoning, on the same deadlines as the rest, and usage counts them; with the
default (0) no response carries anything new."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

import spec
from reference_server.engines.base import SamplingParams
from reference_server.engines.mock import MockEngine
from reference_server.launcher import RunningServer, running_server

CHUNK = jsonschema.Draft202012Validator(spec.chunk_schema())
RESPONSE = jsonschema.Draft202012Validator(spec.response_schema())
NO_EOS = {"0": -100}  # the mock's end-of-sequence token banned: every answer is max_tokens long
FAST = ("--ttft-ms", "0", "--itl-ms", "0")


@pytest.fixture(scope="module")
def plain() -> Iterator[RunningServer]:
    with running_server(*FAST, engine="mock") as server:
        yield server


@pytest.fixture(scope="module")
def thinking() -> Iterator[RunningServer]:
    with running_server(*FAST, "--mock-reasoning-tokens", "3", engine="mock") as server:
        yield server


@pytest.fixture(scope="module")
def thinking_vllm() -> Iterator[RunningServer]:
    with running_server(*FAST, "--mock-reasoning-tokens", "2", "--mock-reasoning-field", "reasoning",
                        engine="mock") as server:
        yield server


def post(server: RunningServer, **extra: Any) -> bytes:
    body = {"model": server.model, "messages": [{"role": "user", "content": "Think about the cat."}],
            "max_tokens": 8, "logit_bias": NO_EOS, "seed": 7, **extra}
    conn = http.client.HTTPConnection(server.base_url.removeprefix("http://"), timeout=30)
    try:
        conn.request("POST", spec.CHAT_PATH, body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {server.api_key}"})
        response = conn.getresponse()
        data = response.read()
        assert response.status == 200, data[:300]
        return data
    finally:
        conn.close()


def chunks(server: RunningServer, **extra: Any) -> list[dict[str, Any]]:
    """The stream's chunks (schema-checked), without the final [DONE]."""
    events = [e.removeprefix(b"data: ").decode() for e in post(server, stream=True, **extra).split(b"\n\n") if e]
    assert events[-1] == "[DONE]"
    out = [json.loads(e) for e in events[:-1]]
    for chunk in out:
        assert not list(CHUNK.iter_errors(chunk)), chunk
    return out


def completion(server: RunningServer, **extra: Any) -> dict[str, Any]:
    body = json.loads(post(server, **extra))
    assert not list(RESPONSE.iter_errors(body)), body
    return body


def deltas(stream: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The deltas that carry text, in order (the role chunk and the finish chunk left out)."""
    return [c["choices"][0]["delta"] for c in stream
            if c["choices"] and any(v for k, v in c["choices"][0]["delta"].items() if k != "role")]


def test_engine_marks_the_first_n_tokens_and_keeps_their_deadlines() -> None:
    """Reasoning tokens are generated tokens: token k is due at TTFT + k x ITL, reasoning or not."""
    params = SamplingParams(max_tokens=6, logit_bias={0: -100})

    async def main() -> list[tuple[bool, float]]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        engine = MockEngine(ttft_ms=40, itl_ms=30, reasoning_tokens=4)
        return [(t.reasoning, loop.time() - start) async for t in engine.stream([1], params, threading.Event(), start)]

    tokens = asyncio.run(main())
    assert [flag for flag, _ in tokens] == [True] * 4 + [False] * 2
    for k, (_, t) in enumerate(tokens):
        due = 0.040 + 0.030 * k
        assert due - 1e-4 <= t < due + 0.020, (k, t)  # late only by scheduling noise, never by an ITL
    with pytest.raises(ValueError):
        MockEngine(reasoning_tokens=-1)


def test_default_sends_nothing_new(plain: RunningServer) -> None:
    streamed = chunks(plain)
    body = completion(plain)
    for chunk in streamed:
        for choice in chunk["choices"]:
            assert set(choice["delta"]) <= {"role", "content", "refusal"}, chunk  # refusal: OpenAI's, null
    assert set(body["choices"][0]["message"]) == {"role", "content", "refusal"}
    assert set(streamed[-1]["usage"]) == set(body["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}


def test_streamed_reasoning_comes_first_then_content(thinking: RunningServer) -> None:
    stream = chunks(thinking)
    texts = deltas(stream)
    assert [set(d) for d in texts] == [{"reasoning_content"}] * 3 + [{"content"}] * 5
    assert all(d["reasoning_content"] for d in texts[:3]) and all(d["content"] for d in texts[3:])
    usage = stream[-1]["usage"]
    assert usage["completion_tokens"] == 8 and usage["total_tokens"] == usage["prompt_tokens"] + 8
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 3}
    assert stream[-2]["choices"][0]["finish_reason"] == "length"  # 8 generated of max_tokens 8


def test_non_streamed_reasoning_is_the_streamed_one(thinking: RunningServer) -> None:
    stream, body = chunks(thinking), completion(thinking)
    message = body["choices"][0]["message"]
    texts = deltas(stream)
    assert message["reasoning_content"] == "".join(d["reasoning_content"] for d in texts[:3])
    assert message["content"] == "".join(d["content"] for d in texts[3:])
    assert body["usage"]["completion_tokens"] == 8
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 3}


def test_every_choice_reasons_and_usage_sums_them(thinking: RunningServer) -> None:
    stream = chunks(thinking, n=2)
    per_choice: dict[int, list[str]] = {0: [], 1: []}
    for chunk in stream:
        for choice in chunk["choices"]:
            per_choice[choice["index"]] += [key for key, value in choice["delta"].items() if key != "role" and value]
    assert per_choice[0] == per_choice[1] == ["reasoning_content"] * 3 + ["content"] * 5
    assert stream[-1]["usage"]["completion_tokens"] == 16
    assert stream[-1]["usage"]["completion_tokens_details"] == {"reasoning_tokens": 6}


def test_an_answer_shorter_than_the_reasoning_is_all_reasoning(thinking: RunningServer) -> None:
    stream = chunks(thinking, max_tokens=2)
    assert [set(d) for d in deltas(stream)] == [{"reasoning_content"}] * 2
    assert stream[-1]["usage"]["completion_tokens_details"] == {"reasoning_tokens": 2}
    message = completion(thinking, max_tokens=2)["choices"][0]["message"]
    assert message["content"] == "" and message["reasoning_content"]


def test_reasoning_under_vllms_newer_key(thinking_vllm: RunningServer) -> None:
    texts = deltas(chunks(thinking_vllm))
    assert [set(d) for d in texts] == [{"reasoning"}] * 2 + [{"content"}] * 6
    message = completion(thinking_vllm)["choices"][0]["message"]
    assert set(message) == {"role", "content", "refusal", "reasoning"} and message["reasoning"]
