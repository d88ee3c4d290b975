"""OpenAI's required response fields: the reference server sends choices[].message.refusal and
choices[].logprobs.refusal as null (bodies and stream chunks), and the openai profile's
schema.openai_refusal check (should-level) fails an endpoint that leaves them out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from broken_servers import Call, Fault, broken_server, each_choice, each_chunk

from conformance import registry
from conformance.context import Context
from conformance.runner import run_one
from conformance.target import Target
from reference_server.launcher import RunningServer, running_server


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with running_server("--ttft-ms", "0", "--itl-ms", "0", engine="mock") as running:
        yield running


def _post(server: RunningServer, **body: Any) -> requests.Response:
    return requests.post(server.api_base + "/chat/completions", timeout=30,
                         headers={"Authorization": f"Bearer {server.api_key}"},
                         json={"model": server.model, "messages": [{"role": "user", "content": "hi"}],
                               "max_tokens": 4, **body})


def _run(server: RunningServer, url: str, profile: str = "openai") -> Any:
    target = Target(base_url=url, api_key=server.api_key, model=server.model, profile=profile, timeout_s=60)
    (item,) = registry.collect(target, "schema.openai_refusal")
    assert item.severity == "should"
    ctx = Context(target)
    try:
        return run_one(item, ctx)
    finally:
        ctx.client.close()


def test_the_reference_server_sends_refusal_null(server: RunningServer) -> None:
    choice = _post(server, logprobs=True).json()["choices"][0]
    assert "refusal" in choice["message"] and choice["message"]["refusal"] is None
    assert "refusal" in choice["logprobs"] and choice["logprobs"]["refusal"] is None
    lines = _post(server, logprobs=True, stream=True).text.splitlines()
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    with_logprobs = [c for chunk in chunks for c in chunk["choices"] if isinstance(c.get("logprobs"), dict)]
    assert with_logprobs and all(c["logprobs"]["refusal"] is None for c in with_logprobs)


def test_the_openai_profile_checks_them_and_the_documented_one_does_not(server: RunningServer) -> None:
    assert _run(server, server.base_url).outcome == "passed"
    documented = _run(server, server.base_url, profile="documented")
    assert documented.outcome == "skipped" and "openai profile" in documented.message


def _drop_message_refusal(call: Call, choice: dict[str, Any]) -> None:
    choice.get("message", {}).pop("refusal", None)


def _drop_logprobs_refusal(call: Call, item: dict[str, Any]) -> None:
    for choice in item.get("choices") or []:
        if isinstance(choice.get("logprobs"), dict):
            choice["logprobs"].pop("refusal", None)


@pytest.mark.parametrize("fault, reason", [
    (Fault("no_message_refusal", ("schema.openai_refusal",), on_json=each_choice(_drop_message_refusal)),
     "choices[0].message has no 'refusal'"),
    (Fault("no_chunk_logprobs_refusal", ("schema.openai_refusal",), on_stream=each_chunk(_drop_logprobs_refusal)),
     "logprobs has no 'refusal'"),
])
def test_an_endpoint_without_them_fails_the_check(server: RunningServer, fault: Fault, reason: str) -> None:
    with broken_server(server.base_url, fault, server.api_key) as url:
        result = _run(server, url)
    assert result.outcome == "failed" and reason in result.message, result.message
    assert result.curl and url in result.curl
