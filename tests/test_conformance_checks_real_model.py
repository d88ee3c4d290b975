"""The checks that judge a model's behaviour (effects of sampling parameters, logit_bias on the
text, logprob spelling, whole characters in streams) against the real model: none fails on the
reference server, and each effect check still catches a server that ignores its parameter when
the model is a real one (the margins hold beyond the mock)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from broken_servers import FAULTS, Fault, broken_server
from test_broken_servers import TEXT_ONLY, run_fresh, target_at

from reference_server.launcher import RunningServer, running_server

pytestmark = pytest.mark.slow

MODEL_CHECKS = (
    *TEXT_ONLY, "logprobs.shape", "logprobs.spell_content", "logprobs.spell_content_stream",
    "logit_bias.non_integer_key", "logit_bias.unknown_token", "json_mode.invalid_schema",
    "streaming.no_replacement_char", "streaming.finish_reason_once", "stop.contains_and_ends", "stop.stream",
    "connection.close_announced",
)
EFFECT_FAULTS = [fault for fault in FAULTS if any(c.startswith("sampling.") or c == "logit_bias.ban"
                                                  for c in fault.catches)]
NO_LOGPROBS = next(fault for fault in FAULTS if fault.name == "no_logprobs")


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with running_server("--threads", "1") as running:
        yield running


def test_none_fails_on_the_reference(server: RunningServer) -> None:
    results = run_fresh(target_at(server, server.base_url), MODEL_CHECKS)
    bad = {check_id: f"{r.outcome}: {r.message}" for check_id, r in results.items() if r.outcome != "passed"}
    assert not bad, bad


def test_text_only_checks_pass_without_logprobs(server: RunningServer) -> None:
    """llama-cpp-python's case: logit_bias applied, no logprobs returned."""
    with broken_server(server.base_url, NO_LOGPROBS, server.api_key) as url:
        results = run_fresh(target_at(server, url), TEXT_ONLY)
    bad = {check_id: f"{r.outcome}: {r.message}" for check_id, r in results.items() if r.outcome != "passed"}
    assert not bad, bad


@pytest.mark.parametrize("fault", EFFECT_FAULTS, ids=[fault.name for fault in EFFECT_FAULTS])
def test_an_ignored_parameter_is_caught_on_the_real_model(server: RunningServer, fault: Fault) -> None:
    with broken_server(server.base_url, fault, server.api_key) as url:
        results = run_fresh(target_at(server, url), fault.catches)
    for (check_id, result), reason in zip(results.items(), fault.reasons, strict=True):
        assert result.outcome == "failed" and reason in result.message, (
            f"{check_id}: {result.outcome}: {result.message}")
