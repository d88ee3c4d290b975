"""The suite can fail: against servers that each break exactly one rule, the check for that rule
fails (with evidence), while the same checks pass on the reference and through a transparent proxy."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from broken_servers import (
    FAULTS,
    LACKING,
    REQUIRED_REFUSED,
    TOOLS_IGNORED,
    TOOLS_REFUSED,
    VARIANTS,
    Fault,
    broken_server,
    cold_first_answer,
)
from check_ids import EFFECT_IDS

from conformance import registry
from conformance.context import Context
from conformance.registry import Check
from conformance.runner import run_one
from conformance.target import Target
from reference_server.launcher import RunningServer, running_server

PROFILES = sorted({fault.profile for fault in FAULTS})
# The checks some fault must make fail, per profile they run under.
CAUGHT_BY = {profile: sorted({check_id for fault in FAULTS if fault.profile == profile for check_id in fault.catches})
             for profile in PROFILES}


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with running_server("--ttft-ms", "0", "--itl-ms", "0", engine="mock") as running:
        yield running


def target_at(server: RunningServer, base_url: str, profile: str = "documented") -> Target:
    return Target(base_url=base_url, api_key=server.api_key, model=server.model, timeout_s=60, profile=profile)


def other_profile(result: Any) -> bool:
    """The check belongs to another profile (e.g. the openai profile's tools checks in a documented run):
    skipped, so it can neither pass nor fail here."""
    return result.outcome == "skipped" and "--profile" in result.message


def checks_by_id(target: Target, ids: list[str] | tuple[str, ...]) -> list[Check]:
    found = {item.id: item for item in registry.collect(target)}
    missing = [check_id for check_id in ids if check_id not in found]
    assert not missing, f"no such checks: {missing}"
    return [found[check_id] for check_id in ids]


def run_fresh(target: Target, ids: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Each check in its own fresh Context (no memoized baselines shared)."""
    results = {}
    for item in checks_by_id(target, ids):
        ctx = Context(target)
        try:
            results[item.id] = run_one(item, ctx)
        finally:
            ctx.client.close()
    return results


def test_faults_are_distinct_and_many() -> None:
    names = [fault.name for fault in FAULTS]
    assert len(names) == len(set(names)) >= 16
    assert all(fault.catches for fault in FAULTS)
    assert all(len(fault.reasons) == len(fault.catches) for fault in FAULTS), "a reason per catching check"


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("via_proxy", [False, True], ids=["reference", "transparent-proxy"])
def test_the_catching_checks_pass_on_a_correct_server(server: RunningServer, via_proxy: bool, profile: str) -> None:
    if via_proxy:
        with broken_server(server.base_url, None, server.api_key) as url:
            results = run_fresh(target_at(server, url, profile), CAUGHT_BY[profile])
    else:
        results = run_fresh(target_at(server, server.base_url, profile), CAUGHT_BY[profile])
    bad = {check_id: f"{r.outcome}: {r.message}" for check_id, r in results.items() if r.outcome != "passed"}
    assert not bad, bad


def test_a_connection_dropped_after_each_stream_fails_no_check(server: RunningServer) -> None:
    """A server that closes a kept-alive connection after each stream without `Connection: close`
    (llama-server) makes no later check fail with a transport error: the request is sent again."""
    closing = Fault("close_after_stream", (), close_after_stream=True)
    with broken_server(server.base_url, closing, server.api_key) as url:
        target = target_at(server, url)
        ctx = Context(target)
        try:
            results = [run_one(item, ctx) for item in registry.collect(target, "streaming or usage")]
        finally:
            ctx.client.close()
    bad = {r.id: r.message for r in results if r.outcome != "passed" and not other_profile(r)}
    assert len(results) >= 10 and not bad, bad


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.name for fault in FAULTS])
def test_a_broken_server_is_caught(server: RunningServer, fault: Fault) -> None:
    with broken_server(server.base_url, fault, server.api_key) as url:
        results = run_fresh(target_at(server, url, fault.profile), fault.catches)
    for (check_id, result), reason in zip(results.items(), fault.reasons, strict=True):
        assert result.outcome == "failed", (
            f"{fault.name}: {check_id} should fail, got {result.outcome}: {result.message}\n"
            f"{result.response_excerpt}")
        assert reason in result.message, f"{fault.name}: {check_id} failed for another reason: {result.message}"
        assert result.curl and url in result.curl, f"{fault.name}: {check_id} has no curl line through the proxy"
        assert result.response_excerpt and result.response_excerpt.startswith("HTTP "), (
            f"{fault.name}: {check_id} has no response excerpt")


@pytest.mark.parametrize("fault", [f for f in FAULTS if f.spares], ids=[f.name for f in FAULTS if f.spares])
def test_one_deviation_is_one_failure(server: RunningServer, fault: Fault) -> None:
    """Under the fault, the checks its `spares` expression selects do not fail for it: they pass, or
    report not supported naming the check that does fail. One context, as in a real run."""
    with broken_server(server.base_url, fault, server.api_key) as url:
        target = target_at(server, url, fault.profile)
        checks = [item for item in registry.collect(target, fault.spares) if item.id not in fault.catches]
        ctx = Context(target)
        try:
            results = [run_one(item, ctx) for item in checks]
        finally:
            ctx.client.close()
    assert results, f"{fault.name}: its spares select no check"
    bad = {r.id: f"{r.outcome}: {r.message}" for r in results
           if not (r.outcome == "passed" or other_profile(r)
                   or (r.outcome == "not_supported" and any(c in r.message for c in fault.catches)))}
    assert not bad, f"{fault.name}: {bad}"


def test_an_integer_code_spares_every_range_check(server: RunningServer) -> None:
    """The case that motivated `spares`: the range checks run under it, and they are many."""
    (fault,) = [f for f in FAULTS if f.name == "integer_code"]
    ranges = [item for item in registry.collect(target_at(server, server.base_url), fault.spares)
              if item.id.startswith("ranges.")]
    assert len(ranges) > 40


STREAM_RULES = ("streaming.", "usage.")


@pytest.mark.parametrize("variant", VARIANTS, ids=[variant.name for variant in VARIANTS])
def test_an_allowed_variant_passes(server: RunningServer, variant: Fault) -> None:
    """What the spec allows (e.g. usage: null on every chunk but the last) fails no check."""
    with broken_server(server.base_url, variant, server.api_key) as url:
        target = target_at(server, url)
        ids = [item.id for item in registry.collect(target) if item.id.startswith(STREAM_RULES)]
        results = run_fresh(target, ids)
    bad = {check_id: f"{r.outcome}: {r.message}" for check_id, r in results.items()
           if r.outcome != "passed" and not other_profile(r)}
    assert len(ids) >= 15 and not bad, bad


# What must still pass where logprobs are lacking: the checks that judge the text alone.
TEXT_ONLY = ("logit_bias.force", "logit_bias.ban", *EFFECT_IDS)


@pytest.mark.parametrize(("fault", "relying", "reason"), LACKING, ids=[fault.name for fault, _, _ in LACKING])
def test_a_lacking_feature_is_not_supported_not_failed(server: RunningServer, fault: Fault,
                                                      relying: tuple[str, ...], reason: str) -> None:
    also = TEXT_ONLY if fault.name == "no_logprobs" else ()
    with broken_server(server.base_url, fault, server.api_key) as url:
        results = run_fresh(target_at(server, url), (*relying, *also))
    for check_id in relying:
        result = results[check_id]
        assert result.outcome == "not_supported", f"{check_id}: {result.outcome}: {result.message}"
        assert reason in result.message, f"{check_id}: {result.message}"
    bad = {check_id: f"{results[check_id].outcome}: {results[check_id].message}" for check_id in also
           if results[check_id].outcome != "passed"}
    assert not bad, bad


def test_a_penalty_ignored_is_caught_where_the_first_answer_differs(server: RunningServer) -> None:
    """llama-cpp-python ignores repetition_penalty, but its first answer to a prompt differs from the
    later ones: the penalized answer differed from that first plain one, and the check passed."""
    with broken_server(server.base_url, cold_first_answer("repetition_penalty"), server.api_key) as url:
        result = run_fresh(target_at(server, url), ("sampling.repetition_penalty_effect",))[
            "sampling.repetition_penalty_effect"]
    assert result.outcome == "failed", f"{result.outcome}: {result.message}"
    assert "repetition_penalty is ignored" in result.message


def test_an_endpoint_whose_first_answer_differs_passes_when_it_applies_the_penalty(server: RunningServer) -> None:
    """The same unsteady first answer with the penalty applied (the allowed variant): the penalized
    answer is compared with the steady plain one, and the check passes."""
    with broken_server(server.base_url, cold_first_answer(None), server.api_key) as url:
        results = run_fresh(target_at(server, url), ("sampling.repetition_penalty_effect",
                                                     "sampling.frequency_penalty_effect"))
    bad = {check_id: f"{r.outcome}: {r.message}" for check_id, r in results.items() if r.outcome != "passed"}
    assert not bad, bad


def test_an_endpoint_refusing_required_fails_no_tools_check(server: RunningServer) -> None:
    """tool_choice required refused with a 4xx, calls forced by name served: the checks of
    `required` (required_calls, parallel_distinct) are not supported, every other tools check passes."""
    with broken_server(server.base_url, REQUIRED_REFUSED, server.api_key) as url:
        target = target_at(server, url, "openai")
        results = run_fresh(target, [item.id for item in registry.collect(target, "tools")])
    outcomes = {check_id: (r.outcome, r.message) for check_id, r in results.items()}
    assert outcomes.pop("tools.parallel_distinct")[0] == outcomes.pop("tools.required_calls")[0] == "not_supported"
    bad = {check_id: outcome for check_id, outcome in outcomes.items() if outcome[0] != "passed"}
    assert not bad, bad


@pytest.mark.parametrize("fault", [TOOLS_REFUSED, TOOLS_IGNORED], ids=["refused", "ignored"])
def test_an_endpoint_without_tools_is_not_supported_never_failed(server: RunningServer, fault: Fault) -> None:
    """Tools answered with a 4xx (what the ExLlamaV2 engine does) or silently dropped: every tools
    check says not supported, naming tools."""
    with broken_server(server.base_url, fault, server.api_key) as url:
        target = target_at(server, url, "openai")
        results = run_fresh(target, [item.id for item in registry.collect(target, "tools")])
    assert len(results) >= 9
    bad = {check_id: f"{r.outcome}: {r.message}" for check_id, r in results.items()
           if r.outcome != "not_supported" or "relies on tools" not in r.message}
    assert not bad, bad
