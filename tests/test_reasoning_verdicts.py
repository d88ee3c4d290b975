"""Reasoning deltas break no check: the whole suite (openai profile, so the tools checks too) gives
the mock with `--mock-reasoning-tokens 5` the verdicts it gives the plain mock, under either key the
reasoning goes out as."""

from __future__ import annotations

import pytest

from conformance import registry
from conformance.context import Context
from conformance.runner import run_one
from conformance.target import Target
from reference_server.launcher import running_server

FAST = ("--ttft-ms", "0", "--itl-ms", "0")


def verdicts(*args: str) -> dict[str, str]:
    """Every check's outcome against a mock started with `args`, in one context (as a real run)."""
    with running_server(*FAST, *args, engine="mock") as server:
        target = Target(base_url=server.base_url, api_key=server.api_key, model=server.model, timeout_s=60,
                        profile="openai", max_examples=5)
        ctx = Context(target)
        try:
            return {item.id: run_one(item, ctx).outcome for item in registry.collect(target)}
        finally:
            ctx.client.close()


@pytest.fixture(scope="module")
def plain() -> dict[str, str]:
    return verdicts()


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_changes_no_verdict(plain: dict[str, str], field: str) -> None:
    thinking = verdicts("--mock-reasoning-tokens", "5", "--mock-reasoning-field", field)
    assert plain["tools.stream_index"] == "passed" and len(plain) > 100
    changed = {check_id: f"{plain[check_id]} -> {outcome}" for check_id, outcome in thinking.items()
               if plain.get(check_id) != outcome}
    assert not changed, changed
