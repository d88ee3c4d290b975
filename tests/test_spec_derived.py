"""The spec is the one parameter table: a parameter added to a copy of spec/openapi.yaml, with no
code change, is validated by the reference server and handed to its engine, gets range checks,
a fuzz field group, an effect check and a feature (in the feature list and the report's table)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml
from schemathesis.generation import GenerationMode

import spec
from conformance.checks.effects import effect_checks
from conformance.checks.fuzz import _shape, feature_fields
from conformance.checks.ranges import range_checks
from conformance.context import Context
from conformance.runner import run_one
from conformance.target import Target
from reference_server.engines.base import SamplingParams
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


def test_range_checks_follow_the_new_parameter(api: spec.ApiSpec) -> None:
    checks = {item.id: item for item in range_checks(target(api))}
    for suffix in ("inside", "below_min", "above_max", "exclusive_min_end", "inclusive_max_end", "wrong_type", "null"):
        assert f"ranges.typical_p.{suffix}" in checks
    assert "ranges.typical_p.inclusive_min_end" not in checks
    # The checks rely on the parameter's feature: declared unsupported, they are not supported
    # (before any request is sent: the target points nowhere).
    unsupported = target(api, skip_features=frozenset({"typical"}))
    ctx = Context(unsupported)
    try:
        result = run_one(checks["ranges.typical_p.above_max"], ctx)
    finally:
        ctx.client.close()
    assert result.outcome == "not_supported" and "typical" in result.message


def test_the_fuzz_groups_hold_the_new_parameter(api: spec.ApiSpec) -> None:
    assert feature_fields(api)["typical"] == ("typical_p",)
    generated = body(typical_p=0.3, top_k=5)
    _shape(generated, target(api, skip_features=frozenset({"typical"})), GenerationMode.POSITIVE)
    assert "typical_p" not in generated and generated["top_k"] == 5


def test_the_new_feature_is_listed_and_reported(api: spec.ApiSpec) -> None:
    assert "typical" in api.feature_names and "typical" not in spec.default().feature_names
    effects = {item.id: item for item in effect_checks(api)}
    check = effects["typical.typical_p_effect"]
    assert check.feature == "typical" and "typical_p 0.01" in check.description
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

    descriptions = {item.id: item.description for item in effect_checks(write_spec(tmp_path, move_ends))}
    assert descriptions["sampling.top_k_effect"].startswith("top_k 4 ")
    assert descriptions["sampling.frequency_penalty_effect"].startswith("frequency_penalty 2.9 ")
    assert descriptions["sampling.min_p_effect"].startswith("min_p 0.9 ")
    packaged = {item.id: item.description for item in effect_checks(spec.default())}
    assert packaged["sampling.top_k_effect"].startswith("top_k 2 ")
    assert packaged["sampling.frequency_penalty_effect"].startswith("frequency_penalty 1.9 ")


def test_sampling_params_defaults_are_the_spec_neutral_values() -> None:
    """Every SamplingParams field the spec marks with x-neutral defaults to that value."""
    defaults = {item.name: item.default for item in dataclasses.fields(SamplingParams)
                if item.default is not dataclasses.MISSING}
    engine = {param.name: param.engine_value({}) for param in spec.default().engine_parameters()}
    named = {name: value for name, value in engine.items() if name in defaults}
    assert named == {name: defaults[name] for name in named}
    assert set(engine) - set(named) == {"logit_bias"}  # a mapping: a default_factory, {} as in the spec
    assert engine["logit_bias"] == {} and SamplingParams(max_tokens=1).logit_bias == {}
    assert SamplingParams.from_request({}, spec.default(), max_tokens=1) == SamplingParams(max_tokens=1)


def test_an_undeclared_feature_is_refused(tmp_path: Path) -> None:
    def typo(document: dict[str, Any]) -> None:
        request_properties(document)["top_k"]["x-feature"] = "samplng"

    with pytest.raises(ValueError, match="samplng"):
        write_spec(tmp_path, typo)
