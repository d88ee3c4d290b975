"""The spec is the one parameter table: a parameter added to a copy of spec/openapi.yaml, with no
code change, is validated by the reference server and handed to its engine (which the server says
ignores it), gets range checks, a fuzz field group, an effect check and a feature (in the feature
list and the report's table). A malformed x- key is refused when the spec is loaded."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from schemathesis.generation import GenerationMode

import spec
from conformance.checks.fuzz import _shape, feature_fields
from conformance.context import Context
from conformance.registry import Check, collect
from conformance.runner import run_one
from conformance.target import Target
from reference_server.app import build_app
from reference_server.config import ServerConfig
from reference_server.engines.base import SamplingParams
from reference_server.engines.mock import MockEngine
from reference_server.errors import ApiError
from reference_server.validation import parse_request
from reports import RunReport

# A made-up sampling parameter, written only in the spec copy: 0 < typical_p <= 1, neutral 1.
TYPICAL_P = {
    "type": ["number", "null"],
    "exclusiveMinimum": 0,
    "maximum": 1,
    "description": "Locally typical sampling mass.",
    "x-feature": "typical",
    "x-ranges-need-feature": True,
    "x-neutral": 1,
    "x-effect": {"probe": "collapse", "end": "min", "margin": 0.01},
}
NOWHERE = "http://127.0.0.1:9"  # no check below reaches the network


def write_spec(tmp_path: Path, edit: Any) -> spec.ApiSpec:
    """A copy of the packaged spec, changed by `edit(document)`, loaded from `tmp_path`."""
    document = copy.deepcopy(spec.load_spec())
    edit(document)
    path = tmp_path / "openapi.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return spec.load(path)


def request_properties(document: dict[str, Any]) -> dict[str, Any]:
    return document["components"]["schemas"]["ChatCompletionRequest"]["properties"]


def add_typical_p(document: dict[str, Any]) -> None:
    document["info"]["x-features"].append({"name": "typical", "description": "Locally typical sampling"})
    request_properties(document)["typical_p"] = copy.deepcopy(TYPICAL_P)


@pytest.fixture
def api(tmp_path: Path) -> spec.ApiSpec:
    return write_spec(tmp_path, add_typical_p)


def body(**params: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **params}


def target(api: spec.ApiSpec, **options: Any) -> Target:
    return Target(base_url=NOWHERE, api_key=None, model="m", api=api, **options)


def checks_of(api: spec.ApiSpec, **options: Any) -> dict[str, Check]:
    """Every check collected for a target judged against `api`."""
    return {item.id: item for item in collect(target(api, **options))}


def outcome(check: Check, api: spec.ApiSpec, skip: str) -> str:
    """The check's outcome for a target pointing nowhere that declares `skip` unsupported:
    "not_supported" when the check relies on that feature (decided before any request is sent),
    else whatever the refused connection makes of it."""
    ctx = Context(target(api, skip_features=frozenset({skip})))
    try:
        return run_one(check, ctx).outcome
    finally:
        ctx.client.close()


def test_the_server_validates_the_new_parameter_and_hands_it_to_the_engine(api: spec.ApiSpec) -> None:
    assert parse_request(body(typical_p=0.5), vocab_size=100, api=api).sampling.extras == {"typical_p": 0.5}
    assert parse_request(body(typical_p=1), vocab_size=100, api=api).sampling.extras == {"typical_p": 1.0}
    assert parse_request(body(), vocab_size=100, api=api).sampling.extras == {"typical_p": 1.0}  # x-neutral
    assert parse_request(body(typical_p=None), vocab_size=100, api=api).sampling.extras == {"typical_p": 1.0}
    for value in (0, -0.5, 1.5, "abc"):
        with pytest.raises(ApiError) as refused:
            parse_request(body(typical_p=value), vocab_size=100, api=api)
        assert refused.value.status == 400 and refused.value.param == "typical_p"
    # The packaged spec knows no typical_p: it is an ignored extra there, reaching no engine.
    assert parse_request(body(typical_p=1.5), vocab_size=100).sampling.extras == {}


def test_the_server_says_its_engine_ignores_the_new_parameter(api: spec.ApiSpec,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """No engine applies typical_p: accepted and then dropped, which the server warns about at startup
    and /health lists; on the packaged spec the mock applies every parameter."""
    async def health(config: ServerConfig) -> tuple[dict[str, Any], int]:
        async with TestClient(TestServer(build_app(MockEngine(), config))) as client:
            chat = await client.post("/v1/chat/completions", json=body(model="mock", typical_p=0.5))
            await chat.read()
            return await (await client.get("/health")).json(), chat.status

    with caplog.at_level(logging.WARNING, logger="reference_server"):
        answer, status = asyncio.run(health(ServerConfig(auth_required=False, api=api)))
    assert status == 200 and answer["ignored_parameters"] == ["typical_p"]
    assert any("typical_p" in record.getMessage() and record.levelno == logging.WARNING for record in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="reference_server"):
        answer, status = asyncio.run(health(ServerConfig(auth_required=False)))
    assert status == 200 and answer["ignored_parameters"] == []
    assert not [record for record in caplog.records if "does not apply" in record.getMessage()]


def test_range_checks_follow_the_new_parameter(api: spec.ApiSpec) -> None:
    checks = checks_of(api)
    for suffix in ("inside", "below_min", "above_max", "exclusive_min_end", "inclusive_max_end", "wrong_type", "null"):
        assert f"ranges.typical_p.{suffix}" in checks
    assert "ranges.typical_p.inclusive_min_end" not in checks
    # x-ranges-need-feature: an endpoint without the feature refuses typical_p outright, so declared
    # unsupported, its checks are not supported (before any request is sent: the target points nowhere).
    assert outcome(checks["ranges.typical_p.above_max"], api, "typical") == "not_supported"


def test_range_checks_rely_on_a_feature_only_where_the_spec_says(tmp_path: Path) -> None:
    """Without x-ranges-need-feature a range holds whatever the target declares (as top_k's under
    --skip-feature sampling); a required parameter's (max_tokens) always does."""
    def plain(document: dict[str, Any]) -> None:
        add_typical_p(document)
        del request_properties(document)["typical_p"]["x-ranges-need-feature"]

    api = write_spec(tmp_path, plain)
    assert outcome(checks_of(api)["ranges.typical_p.above_max"], api, "typical") != "not_supported"
    packaged = checks_of(spec.default())
    for check_id, feature in (("ranges.temperature.above_max", "sampling"), ("ranges.top_k.above_max", "sampling"),
                              ("ranges.min_p.above_max", "sampling"), ("ranges.max_tokens.below_min", "max_tokens")):
        assert outcome(packaged[check_id], spec.default(), feature) != "not_supported", check_id
    for check_id, feature in (("ranges.n.above_max", "n"), ("ranges.top_logprobs.above_max", "logprobs"),
                              ("ranges.logit_bias.*.above_max", "logit_bias")):
        assert outcome(packaged[check_id], spec.default(), feature) == "not_supported", check_id


def test_the_fuzz_groups_hold_the_new_parameter(api: spec.ApiSpec) -> None:
    assert feature_fields(api)["typical"] == ("typical_p",)
    generated = body(typical_p=0.3, top_k=5)
    _shape(generated, target(api, skip_features=frozenset({"typical"})), GenerationMode.POSITIVE)
    assert "typical_p" not in generated and generated["top_k"] == 5


def test_temperature_stays_in_generated_requests_without_sampling() -> None:
    """x-kept-without-feature: every endpoint takes temperature, so --skip-feature sampling leaves it in."""
    assert set(feature_fields(spec.default())["sampling"]) == {
        "top_k", "top_p", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty"}
    generated = body(temperature=0.5, top_p=0.5)
    _shape(generated, target(spec.default(), skip_features=frozenset({"sampling"})), GenerationMode.POSITIVE)
    assert generated["temperature"] == 0.5 and "top_p" not in generated


def test_the_new_feature_is_listed_and_reported(api: spec.ApiSpec) -> None:
    assert "typical" in api.feature_names and "typical" not in spec.default().feature_names
    checks = checks_of(api)
    check = checks["typical.typical_p_effect"]
    assert check.feature == "typical" and "typical_p 0.01" in check.description
    assert "typical.typical_p_effect" not in checks_of(spec.default())
    ctx = Context(target(api, skip_features=frozenset({"typical"})))
    try:
        result = run_one(check, ctx)
    finally:
        ctx.client.close()
    report = RunReport(title="t", target={}, started_at="now", duration_s=0.0, results=[result])
    assert report.by_feature()["typical"]["not_supported"] == 1


def test_effect_values_follow_the_ranges(tmp_path: Path) -> None:
    """No effect value is written in code: moving an end in the spec moves the probed value."""
    def move_ends(document: dict[str, Any]) -> None:
        props = request_properties(document)
        props["top_k"]["exclusiveMinimum"] = 3
        props["frequency_penalty"]["exclusiveMaximum"] = 3
        props["min_p"]["maximum"] = 0.9

    descriptions = {item.id: item.description for item in checks_of(write_spec(tmp_path, move_ends)).values()}
    assert descriptions["sampling.top_k_effect"].startswith("top_k 4 ")
    assert descriptions["sampling.frequency_penalty_effect"].startswith("frequency_penalty 2.9 ")
    assert descriptions["sampling.min_p_effect"].startswith("min_p 0.9 ")
    packaged = {item.id: item.description for item in checks_of(spec.default()).values()}
    assert packaged["sampling.top_k_effect"].startswith("top_k 2 ")
    assert packaged["sampling.frequency_penalty_effect"].startswith("frequency_penalty 1.9 ")


def test_the_greedy_parameter_is_sent_under_its_own_name(tmp_path: Path) -> None:
    """The effect checks send the greedy parameter's name, read from the spec (not `temperature`)."""
    def rename(document: dict[str, Any]) -> None:
        props = request_properties(document)
        props["heat"] = props.pop("temperature")

    api = write_spec(tmp_path, rename)
    assert api.greedy_parameter().name == "heat" and api.near_greedy() == 0.01
    checks = checks_of(api)
    assert "sampling.heat_effect" in checks and "sampling.temperature_effect" not in checks
    assert checks["sampling.top_p_effect"].description.startswith("top_p 0.01 at heat 1.5 ")


def test_sampling_params_fields_are_the_spec_neutral_parameters() -> None:
    """SamplingParams has a field for exactly the x-neutral parameters (besides what needs more than a
    type), and each defaults to the neutral value that switches its filter off."""
    not_parameters = {"max_tokens", "json_mode", "json_schema", "extras"}
    fields = {item.name: item for item in dataclasses.fields(SamplingParams)}
    assert set(fields) - not_parameters == {param.name for param in spec.default().engine_parameters()}
    defaults = SamplingParams(max_tokens=1)
    assert (defaults.temperature, defaults.top_p, defaults.top_k, defaults.min_p) == (1.0, 1.0, 0, 0.0)
    assert (defaults.frequency_penalty, defaults.presence_penalty, defaults.repetition_penalty) == (0, 0, 1.0)
    assert (defaults.seed, defaults.logprobs, defaults.top_logprobs, defaults.logit_bias) == (None, False, 0, {})
    assert SamplingParams.from_request({}, spec.default(), max_tokens=1) == defaults


def test_an_undeclared_feature_is_refused(tmp_path: Path) -> None:
    def typo(document: dict[str, Any]) -> None:
        request_properties(document)["top_k"]["x-feature"] = "samplng"

    with pytest.raises(ValueError, match="samplng"):
        write_spec(tmp_path, typo)


def edit_property(name: str, change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def edit(document: dict[str, Any]) -> None:
        change(request_properties(document)[name])

    return edit


def two_greedy(document: dict[str, Any]) -> None:
    request_properties(document)["top_p"]["x-effect"] = {"probe": "greedy", "end": "min", "margin": 0.01}


@pytest.mark.parametrize(("edit", "message"), [
    # a typo'd x- key: the property would silently never reach the engine
    (edit_property("top_k", lambda prop: prop.update({"x-nuetral": prop.pop("x-neutral")})), "top_k.*'x-nuetral'"),
    (edit_property("seed", lambda prop: prop.update({"x-requries": {"logprobs": True}})), "seed.*'x-requries'"),
    # x-effect: without x-neutral, an unknown key, an unknown probe, no such end, no margin at an exclusive end
    (edit_property("top_k", lambda prop: prop.pop("x-neutral")), "top_k has x-effect but no x-neutral"),
    (edit_property("top_k", lambda prop: prop["x-effect"].update({"margn": 1})), "top_k has x-effect"),
    (edit_property("top_k", lambda prop: prop["x-effect"].update({"probe": "narrow"})), "top_k has x-effect"),
    (edit_property("top_p", lambda prop: prop["x-effect"].pop("end")), "top_p has x-effect"),
    (edit_property("min_p", lambda prop: prop.pop("maximum")), "min_p.*no max end"),
    (edit_property("top_p", lambda prop: prop["x-effect"].pop("margin")), "top_p.*margin > 0"),
    (edit_property("seed", lambda prop: prop.update({"x-effect": {"probe": "collapse", "end": "min"}})),
     "seed has an x-effect but no documented range"),
    (two_greedy, "exactly one .* greedy.*temperature.*top_p"),
    # x-requires naming no property
    (edit_property("top_logprobs", lambda prop: prop.update({"x-requires": {"logprob": True}})),
     "top_logprobs has x-requires 'logprob'"),
    # feature-reliance keys need an optional property with a feature
    (edit_property("max_tokens", lambda prop: prop.update({"x-ranges-need-feature": True})),
     "max_tokens has x-ranges-need-feature but is required"),
    (edit_property("n", lambda prop: prop.update({"x-ranges-need-feature": "yes"})), "true or false"),
], ids=["typo-neutral", "typo-requires", "effect-no-neutral", "effect-key", "effect-probe", "effect-no-end",
        "effect-no-bound", "effect-no-margin", "effect-no-range", "two-greedy", "requires-nothing",
        "required-relies", "flag-type"])
def test_a_malformed_x_key_is_refused_at_load(tmp_path: Path, edit: Callable[[dict[str, Any]], None],
                                              message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_spec(tmp_path, edit)


def test_an_unknown_parameter_is_a_key_error_naming_it() -> None:
    with pytest.raises(KeyError, match="no request property 'typicl_p'"):
        spec.default().parameter("typicl_p")


def test_near_refuses_no_margin_at_an_exclusive_end() -> None:
    top_p = spec.default().parameter_ranges("documented")["top_p"]
    assert top_p.near("min", 0.01) == 0.01 and top_p.near("max", 0) == 1
    with pytest.raises(ValueError, match="margin > 0"):
        top_p.near("min", 0)
