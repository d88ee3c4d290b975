"""The range, semantic and fuzzing checks against the reference server (mock engine): every check
passes on it, and a proxy that breaks one rule makes the matching check fail."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from aiohttp import ClientSession, web

import spec
from conformance import registry
from conformance.checks.semantics import pick_stop
from conformance.context import Context
from conformance.registry import Check
from conformance.runner import run_one
from conformance.target import Target
from reference_server.launcher import free_port, running_server

MODULES = ("conformance.checks.ranges", "conformance.checks.semantics", "conformance.checks.fuzz")
SEMANTIC_IDS = (
    "seed.repeat_nonstream", "seed.repeat_stream_vs_nonstream", "stop.contains_and_ends", "stop.stream",
    "max_tokens.length_finish", "n.choices_indices", "logprobs.shape", "logit_bias.force", "logit_bias.ban",
    "json_mode.parsable", "json_mode.schema_valid", "context.truncate_default", "context.error_behavior",
    "sampling.top_k_within",
)


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    with running_server("--ttft-ms", "0", "--itl-ms", "0", engine="mock") as running:
        yield running


def make_target(server: Any, base_url: str | None = None, **options: Any) -> Target:
    return Target(base_url=base_url or server.base_url, api_key=server.api_key, model=server.model,
                  timeout_s=60, **options)


def these_checks(target: Target) -> dict[str, Check]:
    """The checks of the three modules under test."""
    return {item.id: item for item in registry.collect(target, modules=MODULES)}


def run_ids(target: Target, ids: list[str] | tuple[str, ...]) -> dict[str, Any]:
    checks = these_checks(target)
    ctx = Context(target)
    try:
        return {check_id: run_one(checks[check_id], ctx) for check_id in ids}
    finally:
        ctx.client.close()


def describe(results: dict[str, Any]) -> str:
    return "\n".join(f"{r.id}: {r.outcome} {r.message}" for r in results.values() if r.outcome != "passed")


# ---- ids and notes --------------------------------------------------------------------------


def test_range_checks_follow_the_spec(server: Any) -> None:
    checks = these_checks(make_target(server))
    for path, rng in spec.parameter_ranges("documented").items():
        for suffix in ("inside", "wrong_type", "null"):
            assert f"ranges.{path}.{suffix}" in checks
        if rng.exclusive_minimum is not None:
            assert checks[f"ranges.{path}.exclusive_min_end"].category == "exclusive-end"
        if rng.minimum is not None:
            assert checks[f"ranges.{path}.inclusive_min_end"].category == "inclusive-end"
        if rng.minimum is not None or rng.exclusive_minimum is not None:
            assert checks[f"ranges.{path}.below_min"].category == "outside"
    assert "ranges.max_tokens.above_max" not in checks  # no upper bound
    assert "ranges.temperature.exclusive_max_end" in checks and "ranges.logit_bias.*.inclusive_max_end" in checks
    decision = spec.parameter_ranges("documented")["n"].decision
    assert decision and checks["ranges.n.inside"].spec_note == decision
    for check_id in ("ranges.stop.too_many", "ranges.top_logprobs.requires_logprobs", "ranges.messages.empty",
                     *SEMANTIC_IDS, "schema.fuzz_positive", "schema.fuzz_negative"):
        assert check_id in checks
    openai = these_checks(make_target(server, profile="openai"))
    assert openai["ranges.temperature.inclusive_min_end"].category == "inclusive-end"
    assert "ranges.temperature.exclusive_min_end" not in openai


def test_pick_stop_is_deterministic() -> None:
    assert pick_stop(" the cat sat on the mat") == "cat"
    assert pick_stop("ab") is None
    assert pick_stop("") is None
    text = " a a a a a bc bc xyz"
    assert pick_stop(text) == "xyz"


# ---- everything passes on the reference server ----------------------------------------------


@pytest.mark.parametrize("profile", ["documented", "openai"])
def test_ranges(server: Any, profile: str) -> None:
    target = make_target(server, profile=profile)
    ids = [check_id for check_id in these_checks(target) if check_id.startswith("ranges.")]
    results = run_ids(target, ids)
    failed = {check_id for check_id, result in results.items() if result.outcome != "passed"}
    if profile == "documented":
        assert not failed, describe(results)
        return
    # The reference server holds the documented bounds, so OpenAI's inclusive ends are refused:
    # the openai profile flags exactly those.
    assert "ranges.temperature.inclusive_min_end" in failed
    assert "ranges.n.inclusive_max_end" in failed
    for check_id in failed:
        assert results[check_id].outcome == "failed" and check_id.endswith(("_min_end", "_max_end")), describe(results)
        assert "inclusive" in check_id


@pytest.mark.parametrize("check_id", SEMANTIC_IDS)
def test_semantics_pass(server: Any, check_id: str) -> None:
    result = run_ids(make_target(server), [check_id])[check_id]
    assert result.outcome == "passed", f"{result.message}\n{result.curl}"


def test_all_semantics_in_one_context(server: Any) -> None:
    """Shared memoized baselines do not change outcomes."""
    results = run_ids(make_target(server), SEMANTIC_IDS)
    assert all(r.outcome == "passed" for r in results.values()), describe(results)


def test_without_logprobs(server: Any) -> None:
    target = make_target(server, skip_features=frozenset({"logprobs"}))
    results = run_ids(target, ["logit_bias.force", "logit_bias.ban", "sampling.top_k_within",
                               "ranges.top_logprobs.inside", "ranges.top_logprobs.requires_logprobs"])
    assert results["logit_bias.force"].outcome == "passed", results["logit_bias.force"].message
    for check_id in ("logit_bias.ban", "sampling.top_k_within", "ranges.top_logprobs.inside",
                     "ranges.top_logprobs.requires_logprobs"):
        assert results[check_id].outcome == "not_supported"


def test_extreme_but_valid_values_are_not_server_errors(server: Any) -> None:
    """Regression: fuzzing found 500s for max_tokens 1.0 and repetition_penalty 5e-324."""
    headers = {"Authorization": f"Bearer {server.api_key}"}
    base = {"model": server.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for extra in ({"max_tokens": 1.0}, {"repetition_penalty": 5e-324}):
        response = requests.post(server.base_url + spec.CHAT_PATH, json={**base, **extra}, headers=headers,
                                 timeout=30)
        assert response.status_code == 200, (extra, response.text)


@pytest.mark.parametrize("check_id", ["schema.fuzz_positive", "schema.fuzz_negative"])
def test_fuzz(server: Any, check_id: str) -> None:
    result = run_ids(make_target(server, max_examples=25), [check_id])[check_id]
    assert result.outcome == "passed", f"{result.message}\n{result.curl}"


# ---- a proxy that breaks one rule makes the matching check fail -------------------------------

RequestFault = Callable[[dict[str, Any]], dict[str, Any]]
ResponseFault = Callable[[dict[str, Any], int, dict[str, Any]], tuple[int, dict[str, Any]]]


@contextlib.contextmanager
def faulty_proxy(upstream: str, on_request: RequestFault | None = None,
                 on_response: ResponseFault | None = None) -> Iterator[str]:
    """An aiohttp proxy in front of `upstream` that rewrites request bodies and non-streamed
    JSON responses; streamed responses pass through unchanged."""
    loop = asyncio.new_event_loop()
    port = free_port()
    state: dict[str, Any] = {}
    ready = threading.Event()

    async def handle(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if isinstance(body, dict) and on_request is not None:
            body = on_request(dict(body))
            raw = json.dumps(body).encode("utf-8")
        headers = {name: request.headers[name] for name in ("Authorization", "Content-Type") if name in request.headers}
        async with state["session"].request(request.method, upstream + request.path_qs, data=raw,
                                            headers=headers) as upstream_response:
            content = await upstream_response.read()
            status = upstream_response.status
            content_type = upstream_response.headers.get("Content-Type", "application/json")
        if on_response is not None and content_type.startswith("application/json") and isinstance(body, dict):
            status, data = on_response(body, status, json.loads(content))
            content = json.dumps(data).encode("utf-8")
        return web.Response(body=content, status=status, headers={"Content-Type": content_type})

    async def start() -> None:
        state["session"] = ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        state["runner"] = web.AppRunner(app)
        await state["runner"].setup()
        await web.TCPSite(state["runner"], "127.0.0.1", port).start()

    def main() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert ready.wait(10), "proxy did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        async def stop() -> None:
            await state["session"].close()
            await state["runner"].cleanup()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def drop_seed(body: dict[str, Any]) -> dict[str, Any]:
    body.pop("seed", None)
    return body


def force_n1(body: dict[str, Any]) -> dict[str, Any]:
    if "n" in body:
        body["n"] = 1
    return body


def clamp_temperature(body: dict[str, Any]) -> dict[str, Any]:
    if isinstance(body.get("temperature"), int | float):
        body["temperature"] = min(max(body["temperature"], 0.01), 1.99)
    return body


def drop_bans(body: dict[str, Any]) -> dict[str, Any]:
    if isinstance(body.get("logit_bias"), dict):
        body["logit_bias"] = {k: v for k, v in body["logit_bias"].items() if not (isinstance(v, int) and v < 0)}
    return body


def drop_top_k(body: dict[str, Any]) -> dict[str, Any]:
    body.pop("top_k", None)
    return body


def ignore_context_behavior(body: dict[str, Any]) -> dict[str, Any]:
    body.pop("context_length_exceeded_behavior", None)
    return body


def _content_edit(edit: Callable[[dict[str, Any], str], str]) -> ResponseFault:
    def fault(body: dict[str, Any], status: int, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        for choice in data.get("choices") or []:
            message = choice.get("message") or {}
            if isinstance(message.get("content"), str):
                message["content"] = edit(body, message["content"])
        return status, data

    return fault


def _strip_stop(body: dict[str, Any], text: str) -> str:
    stop = body.get("stop")
    return text[: -len(stop)] if isinstance(stop, str) and text.endswith(stop) else text


def _corrupt_json(body: dict[str, Any], text: str) -> str:
    fmt = body.get("response_format") or {}
    return text[:-1] if fmt.get("type") == "json_object" and text else text


def cut_top_logprobs(body: dict[str, Any], status: int, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    for choice in data.get("choices") or []:
        for entry in (choice.get("logprobs") or {}).get("content") or []:
            entry["top_logprobs"] = entry["top_logprobs"][:2]
    return status, data


def always_stop(body: dict[str, Any], status: int, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    for choice in data.get("choices") or []:
        choice["finish_reason"] = "stop"
    return status, data


def drop_usage(body: dict[str, Any], status: int, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    if status == 200:
        data.pop("usage", None)
    return status, data


def accept_everything(body: dict[str, Any], status: int, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    if status != 400:
        return status, data
    return 200, {"id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": "mock",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


FAULTS = [
    ("seed.repeat_nonstream", drop_seed, None),
    ("seed.repeat_stream_vs_nonstream", drop_seed, None),
    ("n.choices_indices", force_n1, None),
    ("stop.contains_and_ends", None, _content_edit(_strip_stop)),
    ("ranges.temperature.above_max", clamp_temperature, None),
    ("ranges.temperature.exclusive_min_end", clamp_temperature, None),
    ("logprobs.shape", None, cut_top_logprobs),
    ("json_mode.parsable", None, _content_edit(_corrupt_json)),
    ("json_mode.schema_valid", None, _content_edit(_corrupt_json)),
    ("logit_bias.ban", drop_bans, None),
    ("sampling.top_k_within", drop_top_k, None),
    ("context.error_behavior", ignore_context_behavior, None),
    ("max_tokens.length_finish", None, always_stop),
    ("schema.fuzz_positive", None, drop_usage),
    ("schema.fuzz_negative", None, accept_everything),
]


@pytest.mark.parametrize(("check_id", "on_request", "on_response"), FAULTS, ids=[f[0] for f in FAULTS])
def test_a_broken_endpoint_fails(server: Any, check_id: str, on_request: RequestFault | None,
                                 on_response: ResponseFault | None) -> None:
    with faulty_proxy(server.base_url, on_request, on_response) as url:
        result = run_ids(make_target(server, base_url=url), [check_id])[check_id]
    assert result.outcome == "failed", f"{check_id} should catch the fault: {result.outcome} {result.message}"
    assert result.curl and url in result.curl
