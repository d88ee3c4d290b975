"""The reference server's Prometheus /metrics (vLLM's names, chatspec: prefix), the mock engine's
generation slots (a queue whose wait shows in TTFT), and --workers N processes on one port."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from reference_server.app import build_app
from reference_server.config import ServerConfig
from reference_server.counts import read_counts
from reference_server.engines.base import SamplingParams
from reference_server.engines.mock import MockEngine
from reference_server.launcher import running_server
from reference_server.metrics import VLLM_EQUIVALENTS

CHAT = "/v3/openai/chat/completions"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a text exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(parsed: dict, name: str, **labels: str) -> float:
    return parsed[(name, tuple(sorted({"model_name": "mock", **labels}.items())))]


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "mock", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
            "logit_bias": {"0": -100}, **extra}


def test_metrics_count_tokens_latencies_and_answers_by_code() -> None:
    async def main() -> str:
        app = build_app(MockEngine(ttft_ms=5, itl_ms=2), ServerConfig(auth_required=False, engine_label="mock"))
        async with TestClient(TestServer(app)) as client:
            await (await client.post(CHAT, json=body(stream=True))).read()
            await (await client.post(CHAT, json=body())).read()
            assert (await client.post(CHAT, json=body(model="nope"))).status == 404
            assert (await client.post(CHAT, json=body(max_tokens=-1))).status == 400
            reply = await client.get("/metrics")
            assert reply.headers["Content-Type"].startswith("text/plain")
            return await reply.text()

    text = asyncio.run(main())
    parsed = samples(text)
    assert value(parsed, "chatspec:generation_tokens_total") == 10
    assert value(parsed, "chatspec:time_to_first_token_seconds_count") == 2
    assert value(parsed, "chatspec:inter_token_latency_seconds_count") == 8  # 4 gaps per 5-token answer
    assert value(parsed, "chatspec:e2e_request_latency_seconds_count") == 2
    assert value(parsed, "chatspec:request_success_total", finished_reason="length") == 2
    assert value(parsed, "chatspec:prompt_tokens_total") > 0
    assert value(parsed, "chatspec:num_requests_running") == 0 and value(parsed, "chatspec:num_requests_waiting") == 0
    codes = {dict(labels)["code"]: v for (name, labels), v in parsed.items() if name == "chatspec:http_responses_total"}
    assert codes == {"200": 2, "404": 1, "400": 1}
    assert value(parsed, "chatspec:engine_info", engine="mock") == 1
    names = {name.removesuffix("_total").removesuffix("_count") for name, _ in parsed}
    assert {name.removesuffix("_total") for name in VLLM_EQUIVALENTS} <= names | {"chatspec:engine_info"}
    # what benchmarks and tests read back to judge a server by its own counts
    assert read_counts(text) == {"responses_by_code": {"200": 2, "404": 1, "400": 1}, "first_tokens": 2,
                                 "answered_in_full": 2, "generation_tokens": 10, "running": 0, "waiting": 0}


def test_waiting_until_the_first_token_then_running() -> None:
    """One slot, TTFT 300 ms: first both requests wait (one for its first token, one for the slot);
    then the first is generating and the second still waits for the slot; at the end, none."""

    async def main() -> list[dict]:
        engine = MockEngine(ttft_ms=300, itl_ms=100, slots=1)
        app = build_app(engine, ServerConfig(auth_required=False))
        async with TestClient(TestServer(app)) as client:
            async def one() -> None:
                await (await client.post(CHAT, json=body(stream=True, max_tokens=3))).read()

            async def gauges() -> tuple[float, float]:
                parsed = samples(await (await client.get("/metrics")).text())
                return value(parsed, "chatspec:num_requests_waiting"), value(parsed, "chatspec:num_requests_running")

            async def until(expected: tuple[float, float]) -> tuple[float, float]:
                """The gauges once they show `expected` (or the last seen after 10 s): waits on state."""
                deadline = asyncio.get_running_loop().time() + 10
                while (seen := await gauges()) != expected and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(0.01)
                return seen

            tasks = [asyncio.ensure_future(one()) for _ in range(2)]
            seen = [await until((2, 0)), await until((1, 1))]
            await asyncio.gather(*tasks)
            seen.append(await gauges())
            return seen

    assert asyncio.run(main()) == [(2, 0), (1, 1), (0, 0)]


def test_mock_slots_queue_streams_and_their_ttft_counts_the_wait() -> None:
    """Two streams on one slot: the second starts when the first ends (3 tokens: 50 + 2 x 10 ms),
    and its first token comes a full TTFT after that."""
    params = SamplingParams(max_tokens=3, logit_bias={0: -100})

    async def main() -> tuple[list[float], list[float], dict]:
        engine = MockEngine(ttft_ms=50, itl_ms=10, slots=1)
        loop = asyncio.get_running_loop()
        origin = loop.time()

        async def times() -> list[float]:
            return [loop.time() - origin async for _ in engine.stream([1, 2], params, threading.Event(), origin)]

        first_task = asyncio.ensure_future(times())
        second_task = asyncio.ensure_future(times())
        for _ in range(100):  # until both streams have begun (one turn of the loop: before any token is due)
            if engine.stats()["running"] + engine.stats()["waiting"] == 2:
                break
            await asyncio.sleep(0)
        stats = engine.stats()
        return await first_task, await second_task, stats

    first, second, stats = asyncio.run(main())
    assert stats["running"] == 1 and stats["waiting"] == 1
    assert first[0] >= 0.050 - 1e-3  # never before its TTFT
    assert second[0] >= first[-1] + 0.050 - 1e-3  # a whole TTFT after the slot came free


def _post(base_url: str, payload: dict) -> int:
    request = urllib.request.Request(base_url + CHAT, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        reply.read()
        return reply.status


def test_workers_share_the_port_and_metrics_sum_over_processes() -> None:
    with running_server("--workers", "3", "--ttft-ms", "1", "--itl-ms", "1", engine="mock", api_key=None) as server:
        assert all(_post(server.base_url, body(max_tokens=2)) == 200 for _ in range(12))
        with urllib.request.urlopen(server.base_url + "/metrics", timeout=10) as reply:
            parsed = samples(reply.read().decode())
        base_url = server.base_url
    assert parsed[("chatspec:http_responses_total", (("code", "200"),))] == 12
    assert value(parsed, "chatspec:generation_tokens_total") >= 24  # plus each worker's start-up check
    with pytest.raises(urllib.error.URLError):  # every worker stopped with the parent
        urllib.request.urlopen(base_url + "/health", timeout=2)


def test_workers_are_for_the_mock_only() -> None:
    from reference_server.__main__ import main

    with pytest.raises(SystemExit) as exited:
        main(["--no-auth", "--engine", "llamacpp", "--workers", "2"])
    assert exited.value.code == 2
