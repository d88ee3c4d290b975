"""Hostile request bodies: what a careless or malicious client sends to a chat endpoint.

Every one must be refused with a 4xx in the error envelope (never a 5xx), naming the offending
parameter where one is to blame. Families: JSON nested thousands of levels deep, huge strings,
NaN/Infinity, invalid UTF-8, duplicate keys, huge integers, a wrong type in every field, and the
spec's own negative examples (schemathesis). Raw-socket faults (bodies shorter than their
Content-Length, slow senders) are in `benchmarks/reliability.py`, which floods a server with these.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jsonschema

import spec

WRONG_VALUES: tuple[Any, ...] = ("x", 3, 2.5, True, [], {}, [1, "a"], {"k": "v"})


@dataclass(frozen=True)
class HostileRequest:
    """One request: `family` names the kind of abuse; `param`, when set, is what the error must name."""

    family: str
    body: bytes
    param: str | None = None
    may_succeed: bool = False  # valid after all (e.g. a huge max_tokens the server lowers to its context)


def _base(model: str) -> dict[str, Any]:
    return {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}


def _nested(depth: int, leaf: str = "1", kind: str = "list") -> str:
    if kind == "list":
        return "[" * depth + leaf + "]" * depth
    return '{"a":' * depth + leaf + "}" * depth


def _with_raw(model: str, field: str, raw_value: str) -> bytes:
    """A valid body with `field` set to a raw JSON fragment (which may be invalid JSON on purpose)."""
    body = _base(model)
    body.pop(field, None)
    text = json.dumps(body)
    return (text[:-1] + f', "{field}": {raw_value}}}').encode()


def _schema_valid(body: dict[str, Any]) -> bool:
    try:
        jsonschema.validate(body, spec.request_schema())
    except jsonschema.ValidationError:
        return False
    return True


def fixed_families(model: str) -> list[HostileRequest]:
    """The hand-made hostile requests (a few hundred), each once."""
    out: list[HostileRequest] = []
    for depth in (100, 1000, 5000, 100_000):
        out.append(HostileRequest("deep_nesting", _nested(depth).encode()))
        out.append(HostileRequest("deep_nesting", _nested(depth, kind="object").encode()))
    for depth in (65, 200, 900):
        out.append(HostileRequest("deep_nesting", _with_raw(model, "messages", _nested(depth, "{}")), "messages"))
        schema = _nested(depth, "{}", "object").replace('"a"', '"items"')
        fmt = f'{{"type": "json_schema", "json_schema": {{"name": "x", "schema": {schema}}}}}'
        out.append(HostileRequest("deep_nesting", _with_raw(model, "response_format", fmt), "response_format"))
    ranges = {name: r for name, r in spec.parameter_ranges().items() if "." not in name}
    floats = [name for name, r in ranges.items() if r.kind == "number"]
    integers = [name for name, r in ranges.items() if r.kind == "integer"] + ["seed"]
    for name in floats:
        for token in ("NaN", "Infinity", "-Infinity", "1e999", "-1e999"):
            out.append(HostileRequest("nan_infinity", _with_raw(model, name, token), name))
    for name in integers:
        for value in (10**400, -(10**400), 2**63, -(2**63) - 1):
            body = {**_base(model), name: value}
            valid = _schema_valid(body)
            out.append(HostileRequest("huge_integer", json.dumps(body).encode(), None if valid else name,
                                      may_succeed=valid))
    text = json.dumps(_base(model)).encode()
    for bad in (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80"):
        out.append(HostileRequest("invalid_utf8", text.replace(b'"hi"', b'"h' + bad + b'i"')))
        out.append(HostileRequest("invalid_utf8", text.replace(b'"model"', b'"mo' + bad + b'del"')))
    for field, raw_value in (("messages", '[{"role": "user", "content": "a\\ud800b"}]'), ("model", '"\\udfff"'),
                             ("stop", '["\\ud800"]'), ("user", '"\\ud83d"')):
        # A lone surrogate, escaped: valid JSON, but no UTF-8 text can hold it.
        out.append(HostileRequest("lone_surrogate", _with_raw(model, field, raw_value), field))
    out.append(HostileRequest("duplicate_keys", _with_raw(model, "max_tokens", "4, \"max_tokens\": -1"), "max_tokens"))
    out.append(HostileRequest("duplicate_keys", _with_raw(model, "temperature", "0.5, \"temperature\": \"hot\""),
                              "temperature"))
    out.append(HostileRequest("huge_string", json.dumps({**_base(model), "model": "m" * 900_000}).encode(), "model"))
    out.append(HostileRequest("huge_string", json.dumps({**_base(model), "stop": ["s" * 400_000]}).encode(),
                              None, may_succeed=True))
    out.append(HostileRequest("huge_string", json.dumps(
        {**_base(model), "messages": [{"role": "user", "content": "word " * 200_000}]}).encode(), "messages"))
    out.append(HostileRequest("oversized_body", json.dumps(
        {**_base(model), "messages": [{"role": "user", "content": "x" * 1_100_000}]}).encode()))
    for raw in (b"", b"null", b"[]", b"1", b'"text"', b"{", b'{"model": ', b"\x00" * 16):
        out.append(HostileRequest("not_an_object", raw))
    properties = spec.request_schema().get("properties", {})
    for name in properties:
        for value in WRONG_VALUES:
            body = {**_base(model), name: value}
            if not _schema_valid(body):
                out.append(HostileRequest("wrong_type", json.dumps(body).encode(), name))
    return out


def schema_negative(model: str, count: int, seed: int) -> list[HostileRequest]:
    """`count` bodies the spec rejects, generated by schemathesis in negative mode."""
    import copy

    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from schemathesis.generation import GenerationMode

    operation = schemathesis.openapi.from_dict(copy.deepcopy(spec.load_spec()))[spec.CHAT_PATH]["POST"]
    found: list[HostileRequest] = []

    @hypothesis_seed(seed)
    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    def collect(case: Any) -> None:
        body = case.body
        if isinstance(body, dict):
            body = {**body, "model": model} if "model" in body and isinstance(body.get("model"), str) else body
            if _schema_valid(body):
                return
        try:
            raw = json.dumps(body).encode()
        except (TypeError, ValueError):
            return
        found.append(HostileRequest("schema_negative", raw))

    collect()
    return found[:count]


def hostile_stream(model: str, total: int, seed: int = 0, negative_examples: int = 300) -> Iterator[HostileRequest]:
    """`total` hostile requests: every fixed one at least once, then a seeded shuffle of all of them."""
    pool = fixed_families(model) + schema_negative(model, negative_examples, seed)
    rng = random.Random(seed)
    sent = 0
    order = list(pool)
    while sent < total:
        for item in order:
            if sent >= total:
                return
            yield item
            sent += 1
        rng.shuffle(order)


def envelope_problem(status: int, body: bytes, request: HostileRequest) -> str | None:
    """What is wrong with the answer to a hostile request, or None when it is right."""
    if status >= 500:
        return f"HTTP {status}"
    if status < 400:
        return None if request.may_succeed else f"HTTP {status}: accepted"
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status} without the error envelope: {body[:120]!r}"
    for key, kind in (("message", str), ("type", str)):
        if not isinstance(error.get(key), kind):
            return f"envelope field {key!r} is not a {kind.__name__}"
    if "param" not in error or "code" not in error:
        return "envelope lacks param or code"
    if request.param is not None and error.get("param") != request.param:
        return f"error names param {error.get('param')!r}, expected {request.param!r}"
    return None
