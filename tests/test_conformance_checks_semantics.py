"""The range, semantic and fuzzing checks against the reference server (mock engine): every check
passes on it. That each fails against a server breaking its rule is tests/test_broken_servers.py's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

import spec
from conformance import registry
from conformance.checks.effects import effect_checks
from conformance.checks.stop import pick_stop
from conformance.context import Context
from conformance.registry import Check
from conformance.runner import run_one
from conformance.target import Target
from reference_server.launcher import running_server

# One module per feature whose rule is a model-agnostic semantic (the checks' ids are read from them).
SEMANTIC_MODULES = tuple(f"conformance.checks.{name}" for name in (
    "seed", "stop", "max_tokens", "n", "logprobs", "logit_bias", "json_mode", "context"))
MODULES = ("conformance.checks.ranges", *SEMANTIC_MODULES, "conformance.checks.effects", "conformance.checks.fuzz")
_ALL = registry.collect(Target(base_url="http://127.0.0.1:1", api_key=None, model="m"), modules=MODULES)
SEMANTIC_IDS = tuple(item.id for item in _ALL if item.run.__module__ in SEMANTIC_MODULES)
EFFECT_IDS = tuple(item.id for item in effect_checks(spec.default()))


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


def test_one_module_per_feature() -> None:
    """Each semantic module holds the checks of one feature, named after it."""
    for module in SEMANTIC_MODULES:
        features = {item.feature for item in _ALL if item.run.__module__ == module}
        assert features == {module.rsplit(".", 1)[1]}, (module, features)
    assert {item.feature for item in _ALL if item.id in EFFECT_IDS} == {"sampling"} and len(EFFECT_IDS) == 7


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


@pytest.mark.parametrize("check_id", SEMANTIC_IDS + EFFECT_IDS)
def test_semantics_pass(server: Any, check_id: str) -> None:
    result = run_ids(make_target(server), [check_id])[check_id]
    assert result.outcome == "passed", f"{result.message}\n{result.curl}"


def test_all_semantics_in_one_context(server: Any) -> None:
    """Shared memoized baselines do not change outcomes."""
    results = run_ids(make_target(server), SEMANTIC_IDS + EFFECT_IDS)
    assert all(r.outcome == "passed" for r in results.values()), describe(results)


def test_without_logprobs(server: Any) -> None:
    """The logit_bias and sampling checks judge the text: declaring logprobs unsupported leaves them running."""
    target = make_target(server, skip_features=frozenset({"logprobs"}))
    results = run_ids(target, ["logit_bias.force", "logit_bias.ban", *EFFECT_IDS, "ranges.top_logprobs.inside",
                               "ranges.top_logprobs.requires_logprobs"])
    for check_id in ("logit_bias.force", "logit_bias.ban", *EFFECT_IDS):
        assert results[check_id].outcome == "passed", f"{check_id}: {results[check_id].message}"
    for check_id in ("ranges.top_logprobs.inside", "ranges.top_logprobs.requires_logprobs"):
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


# A server that breaks one rule makes the matching check fail, for that rule's reason: the faults
# live in tests/broken_servers.py (one harness) and run in tests/test_broken_servers.py.
