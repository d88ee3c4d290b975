"""One deviation, one failure, in the error checks: a parameter named by the validator's location
(body.max_tokens) fails errors.param_bare_name only (the broken_servers fault param_by_location,
tested with every fault), and an integer error code on an answer the fuzzer accepts (429)
fails errors.envelope, never schema.fuzz_positive."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from broken_servers import Call, Fault, Reply, broken_server

from conformance import registry
from conformance.context import Context, bare_param, names_param
from conformance.runner import run_one
from conformance.target import Target
from reference_server.launcher import RunningServer, running_server


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with running_server("--ttft-ms", "0", "--itl-ms", "0", engine="mock") as running:
        yield running


def test_a_location_name_names_the_parameter() -> None:
    assert names_param("body.max_tokens", "max_tokens") and names_param("body.logit_bias.13", "logit_bias")
    assert not names_param("body.top_p", "max_tokens") and not names_param("body", "body.x")
    assert bare_param("body.max_tokens") == "max_tokens" and bare_param("body") == "body"


def _busy_with_integer_codes() -> Fault:
    """Every third chat request answered 429 (schemathesis accepts it for valid data), and every
    error envelope's code an integer."""
    seen = [0]

    def reply(call: Call, answer: Reply) -> Reply:
        if call.method == "POST" and call.path.endswith("/chat/completions"):
            seen[0] += 1
            if seen[0] % 3 == 0:
                answer.status = 429
                answer.headers["Content-Type"] = "application/json"
                answer.headers["Retry-After"] = "1"
                answer.content = (b'{"error": {"message": "busy", "type": "rate_limit_error", "param": null, '
                                  b'"code": 429}}')
                answer.events = None
        return answer

    return Fault("busy_integer_code", ("errors.envelope",), on_reply=reply)


def _run(target: Target, ids: list[str]) -> dict[str, Any]:
    found = {item.id: item for item in registry.collect(target) if item.id in ids}
    ctx = Context(target)
    try:
        return {check_id: run_one(found[check_id], ctx) for check_id in ids}
    finally:
        ctx.client.close()


def test_an_integer_code_fails_the_envelope_check_only(server: RunningServer) -> None:
    with broken_server(server.base_url, _busy_with_integer_codes(), server.api_key) as url:
        target = Target(base_url=url, api_key=server.api_key, model=server.model, timeout_s=60, max_examples=12)
        results = _run(target, ["errors.envelope", "schema.fuzz_positive"])
    envelope, fuzz = results["errors.envelope"], results["schema.fuzz_positive"]
    assert envelope.outcome == "failed" and "is not of type 'string', 'null'" in envelope.message, envelope.message
    assert fuzz.outcome == "passed", fuzz.message


def test_the_reference_server_names_parameters_bare(server: RunningServer) -> None:
    target = Target(base_url=server.base_url, api_key=server.api_key, model=server.model, timeout_s=60)
    result = _run(target, ["errors.param_bare_name"])["errors.param_bare_name"]
    assert result.outcome == "passed", result.message
