"""Request validation in the reference server: every range from `spec`, every refusal naming its parameter."""

from __future__ import annotations

import math
from typing import Any

import jsonschema
import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spec
from reference_server.errors import ApiError
from reference_server.validation import PROFILE, ChatRequest, fit_to_context, parse_request

VOCAB = 64
MESSAGES = [{"role": "user", "content": "Hello"}]
RANGES = spec.parameter_ranges()
INF = math.inf


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": MESSAGES, "max_tokens": 8, **extra}


def parse(payload: Any) -> ChatRequest:
    return parse_request(payload, vocab_size=VOCAB)


def refused(payload: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse(payload)
    error = info.value
    assert error.status == 400
    assert jsonschema.Draft202012Validator(spec.error_schema()).is_valid(error.envelope())
    return error


def top_name(path: str) -> str:
    return path.split(".")[0]


def with_value(path: str, value: Any) -> dict[str, Any]:
    """A request setting the parameter at `path` to `value` (and whatever it needs to be legal)."""
    if path == "logit_bias.*":
        return body(logit_bias={"1": value})
    extra: dict[str, Any] = {path: value}
    if path == "top_logprobs":
        extra["logprobs"] = True
    return body(**extra)


def carried(request: ChatRequest, path: str) -> Any:
    """Where parse_request puts the parameter at `path`."""
    if path == "logit_bias.*":
        return request.sampling.logit_bias[1]
    if path in ("n", "max_tokens"):
        return getattr(request, path)
    return getattr(request.sampling, path)


def _step(rng: spec.ParamRange) -> float:
    return 1 if rng.kind == "integer" else 0.5


def _just_inside(end: float, toward: float, rng: spec.ParamRange) -> float:
    return end + (1 if toward > 0 else -1) if rng.kind == "integer" else math.nextafter(end, toward)


def boundary_cases() -> list[Any]:
    """(path, value, accepted) for each finite end of every range the spec documents."""
    cases = []
    for path, rng in RANGES.items():
        step = _step(rng)
        if rng.minimum is not None:
            cases.append(pytest.param(path, rng.minimum, True, id=f"{path}={rng.minimum}(min)"))
            cases.append(pytest.param(path, rng.minimum - step, False, id=f"{path}={rng.minimum - step}(<min)"))
            if rng.kind == "number":
                below = math.nextafter(rng.minimum, -INF)
                cases.append(pytest.param(path, below, False, id=f"{path}=nextafter-below-min"))
        if rng.exclusive_minimum is not None:
            end = rng.exclusive_minimum
            cases.append(pytest.param(path, end, False, id=f"{path}={end}(exclusive-min)"))
            cases.append(pytest.param(path, end - step, False, id=f"{path}={end - step}(<exclusive-min)"))
            inside = _just_inside(end, INF, rng)
            cases.append(pytest.param(path, inside, True, id=f"{path}={inside}(just-above-exclusive-min)"))
        if rng.maximum is not None:
            cases.append(pytest.param(path, rng.maximum, True, id=f"{path}={rng.maximum}(max)"))
            cases.append(pytest.param(path, rng.maximum + step, False, id=f"{path}={rng.maximum + step}(>max)"))
            if rng.kind == "number":
                above = math.nextafter(rng.maximum, INF)
                cases.append(pytest.param(path, above, False, id=f"{path}=nextafter-above-max"))
        if rng.exclusive_maximum is not None:
            end = rng.exclusive_maximum
            cases.append(pytest.param(path, end, False, id=f"{path}={end}(exclusive-max)"))
            cases.append(pytest.param(path, end + step, False, id=f"{path}={end + step}(>exclusive-max)"))
            inside = _just_inside(end, -INF, rng)
            cases.append(pytest.param(path, inside, True, id=f"{path}={inside}(just-below-exclusive-max)"))
    return cases


def inside_value(rng: spec.ParamRange) -> float:
    low = rng.minimum if rng.minimum is not None else rng.exclusive_minimum
    high = rng.maximum if rng.maximum is not None else rng.exclusive_maximum
    high = high if high is not None else low + 10
    value = (low + high) / 2
    if rng.kind == "integer":
        value = math.floor(value)
        if not rng.contains(value):
            value += 1
    assert rng.contains(value)
    return value


# ---- defaults -------------------------------------------------------------------------------


def test_minimal_body_gets_the_documented_defaults() -> None:
    request = parse(body())
    assert request.model == "m" and request.messages == MESSAGES and request.max_tokens == 8
    assert request.stream is False
    assert request.n == 1
    assert request.stops == []
    assert request.context_behavior == "truncate"
    s = request.sampling
    assert s.max_tokens == 8
    assert s.temperature == 1.0 and s.top_p == 1.0 and s.top_k == 0 and s.min_p == 0.0
    assert s.frequency_penalty == 0.0 and s.presence_penalty == 0.0 and s.repetition_penalty == 1.0
    assert dict(s.logit_bias) == {} and s.seed is None
    assert s.logprobs is False and s.top_logprobs == 0
    assert s.json_mode is False and s.json_schema is None


@pytest.mark.parametrize("path", [p for p, r in RANGES.items() if r.nullable])
def test_null_means_default(path: str) -> None:
    request = parse(with_value(path, None))
    assert carried(parse(body()), path) == carried(request, path)


def test_unknown_properties_are_ignored() -> None:
    assert parse(body(foo=1, tools=[], stream_options={"include_usage": True})).max_tokens == 8


# ---- ranges (all from spec.parameter_ranges) -------------------------------------------------


@pytest.mark.parametrize("path", sorted(RANGES))
def test_value_inside_is_accepted_and_carried(path: str) -> None:
    value = inside_value(RANGES[path])
    assert carried(parse(with_value(path, value)), path) == value


@pytest.mark.parametrize("path,value,accepted", boundary_cases())
def test_range_ends(path: str, value: float, accepted: bool) -> None:
    if accepted:
        assert carried(parse(with_value(path, value)), path) == value
    else:
        assert refused(with_value(path, value)).param == top_name(path)


def test_every_range_has_a_case() -> None:
    covered = {case.values[0] for case in boundary_cases()}
    assert covered == set(RANGES)


@pytest.mark.parametrize("path", sorted(RANGES))
@pytest.mark.parametrize("wrong", ["1", [1], {"x": 1}, True], ids=["string", "array", "object", "bool"])
def test_wrong_type_is_refused(path: str, wrong: Any) -> None:
    assert refused(with_value(path, wrong)).param == top_name(path)


@pytest.mark.parametrize("path", [p for p, r in RANGES.items() if r.kind == "integer"])
def test_fraction_for_an_integer_is_refused(path: str) -> None:
    assert refused(with_value(path, inside_value(RANGES[path]) + 0.5)).param == top_name(path)


@pytest.mark.parametrize("path", [p for p, r in RANGES.items() if not r.nullable])
def test_null_where_not_nullable_is_refused(path: str) -> None:
    assert refused(with_value(path, None)).param == top_name(path)


@pytest.mark.parametrize("path", [p for p, r in RANGES.items() if r.kind == "number"])
def test_nan_is_refused(path: str) -> None:
    assert refused(with_value(path, math.nan)).param == top_name(path)


@pytest.mark.parametrize("path", [p for p, r in RANGES.items() if r.kind == "number"])
def test_infinity_is_refused(path: str) -> None:
    assert refused(with_value(path, INF)).param == top_name(path)
    assert refused(with_value(path, -INF)).param == top_name(path)


@pytest.mark.parametrize(
    "name,value",
    [
        ("stream", "yes"),
        ("logprobs", 1),
        ("seed", 1.5),
        ("seed", "1"),
        ("model", 5),
        ("model", ""),
        ("messages", []),
        ("messages", "hi"),
        ("messages", [{"role": "robot", "content": "x"}]),
        ("messages", [{"role": "user"}]),
        ("messages", [{"role": "user", "content": None}]),
        ("messages", [{"role": "user", "content": [{"type": "image", "text": "x"}]}]),
        ("stop", 5),
        ("stop", ""),
        ("stop", ["ok", ""]),
        ("logit_bias", {"-1": 5}),
        ("logit_bias", {"01": 5}),
        ("logit_bias", {"abc": 5}),
        ("response_format", {"type": "xml"}),
        ("context_length_exceeded_behavior", "ignore"),
        ("user", 7),
    ],
)
def test_other_bad_values_name_their_parameter(name: str, value: Any) -> None:
    assert refused(body(**{name: value})).param == name


# ---- required fields and cross-field rules ---------------------------------------------------


@pytest.mark.parametrize("name", ["model", "messages", "max_tokens"])
def test_missing_required_field_is_named(name: str) -> None:
    payload = body()
    del payload[name]
    error = refused(payload)
    assert error.param == name
    assert name in error.message


def test_a_bad_field_inside_a_message_is_located_and_a_huge_value_never_echoed() -> None:
    """A message matching none of the message shapes: the error points at the field inside it that
    is wrong, and quotes at most a few hundred characters of what was sent."""
    error = refused(body(messages=[{"role": "user", "content": "x" * 500_000, "name": 5}]))
    assert error.param == "messages"
    assert "messages[0].name" in error.message and len(error.message) < 1000, error.message[:300]


def test_missing_field_is_named_before_nested_errors() -> None:
    payload = body(messages=[{"role": "robot", "content": "x"}])
    del payload["model"]
    assert refused(payload).param == "model"


@pytest.mark.parametrize("logprobs", [None, False])
def test_top_logprobs_needs_logprobs(logprobs: bool | None) -> None:
    assert refused(body(top_logprobs=2, logprobs=logprobs)).param == "top_logprobs"
    request = parse(body(top_logprobs=2, logprobs=True))
    assert request.sampling.logprobs is True and request.sampling.top_logprobs == 2


def test_stop_count() -> None:
    limit = spec.max_stop_sequences()
    assert parse(body(stop=[str(i) for i in range(limit)])).stops == [str(i) for i in range(limit)]
    assert refused(body(stop=[str(i) for i in range(limit + 1)])).param == "stop"
    assert parse(body(stop="END")).stops == ["END"]


def test_logit_bias_token_ids_must_be_in_the_vocabulary() -> None:
    assert dict(parse(body(logit_bias={str(VOCAB - 1): 5, "0": -100})).sampling.logit_bias) == {VOCAB - 1: 5, 0: -100}
    error = refused(body(logit_bias={str(VOCAB): 5}))
    assert error.param == "logit_bias"
    assert str(VOCAB) in error.message
    assert refused(body(logit_bias={"9999999999": 1})).param == "logit_bias"


@pytest.mark.parametrize("payload", [[], ["model"], "text", 3, None, True])
def test_non_object_body_is_refused(payload: Any) -> None:
    assert refused(payload).status == 400


def test_integral_float_max_tokens_is_an_int() -> None:
    request = parse(body(max_tokens=1.0))
    assert request.max_tokens == 1 and type(request.max_tokens) is int
    assert type(request.sampling.max_tokens) is int


def test_json_mode() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    request = parse(body(response_format={"type": "json_object", "schema": schema}))
    assert request.sampling.json_mode is True and request.sampling.json_schema == schema
    assert parse(body(response_format={"type": "text"})).sampling.json_mode is False
    bad = refused(body(response_format={"type": "json_object", "schema": {"type": 12}}))
    assert bad.param == "response_format"


def test_message_content_parts_are_accepted() -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert parse(body(messages=parts)).messages == parts


# ---- context fitting -------------------------------------------------------------------------


def test_fit_to_context_keeps_what_fits() -> None:
    request = parse(body(max_tokens=90))
    assert fit_to_context(request, prompt_tokens=10, context_length=100) == 90
    assert fit_to_context(parse(body(max_tokens=90, context_length_exceeded_behavior="error")), 10, 100) == 90


def test_fit_to_context_truncates_by_default() -> None:
    assert fit_to_context(parse(body(max_tokens=100_000)), prompt_tokens=30, context_length=100) == 70
    explicit = parse(body(max_tokens=100_000, context_length_exceeded_behavior="truncate"))
    assert fit_to_context(explicit, prompt_tokens=99, context_length=100) == 1


def test_fit_to_context_error_behaviour() -> None:
    request = parse(body(max_tokens=71, context_length_exceeded_behavior="error"))
    with pytest.raises(ApiError) as info:
        fit_to_context(request, prompt_tokens=30, context_length=100)
    assert info.value.status == 400
    assert info.value.param == "max_tokens"
    assert info.value.code == "context_length_exceeded"


@pytest.mark.parametrize("behavior", ["truncate", "error"])
@pytest.mark.parametrize("prompt_tokens", [100, 150])
def test_prompt_alone_over_the_context(behavior: str, prompt_tokens: int) -> None:
    request = parse(body(max_tokens=1, context_length_exceeded_behavior=behavior))
    with pytest.raises(ApiError) as info:
        fit_to_context(request, prompt_tokens=prompt_tokens, context_length=100)
    assert info.value.status == 400
    assert info.value.code == "context_length_exceeded"
    assert info.value.param == "messages"


# ---- the fast check never lets through what jsonschema refuses ---------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6)
    | st.sampled_from(["user", "assistant", "system", "tool", "developer", "json_object", "text", "1", "0\n"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["role", "content", "type", "text", "name", "tool_call_id", "tool_calls", "function",
                         "schema", "parameters", "0", "1\n", "x"]), inner, max_size=3),
    max_leaves=10,
)


def near_range(path: str) -> st.SearchStrategy[Any]:
    """Values of the parameter at `path` around its documented range: inside it, on its ends and
    past them, and null."""
    r = RANGES[path]
    low = r.minimum if r.minimum is not None else r.exclusive_minimum
    high = r.maximum if r.maximum is not None else r.exclusive_maximum
    if r.kind == "number":
        inside: st.SearchStrategy[Any] = st.floats(low, high, exclude_min=r.exclusive_minimum is not None,
                                                   exclude_max=r.exclusive_maximum is not None)
    else:
        inside = st.integers(None if low is None else low + (r.exclusive_minimum is not None),
                             None if high is None else high - (r.exclusive_maximum is not None))
    ends = [v for v in (low, high) if v is not None]
    around = st.sampled_from(ends).flatmap(lambda end: st.sampled_from([end - 1, end, end + 1, end - 0.5, end + 0.5]))
    return inside | inside | around | st.none()


# The server's request schema, under both validators, compiled once.
FAST_CHECK = jsonschema_rs.Draft202012Validator(spec.default().request_schema(PROFILE))
FULL_CHECK = jsonschema.Draft202012Validator(spec.default().request_schema(PROFILE))
TOP_LEVEL = sorted(path for path in RANGES if "." not in path)
OTHER_NAMES = sorted({param.name for param in spec.default().parameters} - set(TOP_LEVEL)
                     | {"messages", "model", "tools", "tool_choice"})


@st.composite
def changed_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid body with a few parameters changed, mostly to values near their documented ranges (on
    both sides of each end), sometimes to any JSON value; now and then another field (stop, tools,
    response_format...) set to any JSON value, or a message added. About half pass."""
    rarely = st.integers(0, 3).map(lambda roll: roll == 0)
    changes: dict[str, Any] = {}
    for path in draw(st.lists(st.sampled_from(TOP_LEVEL), max_size=3, unique=True)):
        changes[path] = draw(JSON_VALUES) if draw(rarely) else draw(near_range(path))
    if draw(rarely):
        changes["logit_bias"] = draw(st.dictionaries(st.sampled_from(["0", "1", "01", "1\n", "-1", "x"]),
                                                     near_range("logit_bias.*"), max_size=3))
    if draw(rarely):
        changes[draw(st.sampled_from(OTHER_NAMES))] = draw(JSON_VALUES)
    payload = body(**changes)
    if draw(rarely):
        message = {"role": draw(st.sampled_from(["user", "assistant", "system", "tool", "developer", "x"])),
                   "content": draw(st.text(max_size=5) | JSON_VALUES)}
        message.update(draw(st.dictionaries(st.sampled_from(["name", "tool_calls", "tool_call_id"]), JSON_VALUES,
                                            max_size=1)))
        payload["messages"] = [*MESSAGES, message]
    return payload


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=changed_bodies())
def test_a_body_the_fast_check_passes_is_one_jsonschema_passes(payload: dict[str, Any]) -> None:
    """The server asks jsonschema-rs first and jsonschema only for what it refuses: a body the fast
    check passes must be one jsonschema passes too, or an invalid request would get through."""
    if FAST_CHECK.is_valid(payload):
        assert not list(FULL_CHECK.iter_errors(payload)), payload
