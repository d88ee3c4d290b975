"""JSON mode: response_format json_object gives a JSON object (valid against a schema when one is
given); a schema that is no JSON Schema is refused."""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from conformance.checks import _shared as shared
from conformance.context import Context
from conformance.registry import CheckFailed, check
from conformance.target import Exchange

_JSON_SYSTEM = "You are an API that answers with one JSON object and nothing else."
NAME_SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


def _json_body(ctx: Context, user: str, max_tokens: int, fmt: dict[str, Any]) -> dict[str, Any]:
    return ctx.body(messages=[{"role": "system", "content": _JSON_SYSTEM}, {"role": "user", "content": user}],
                    max_tokens=max_tokens, response_format=fmt, seed=ctx.target.seed, temperature=0.7)


def _parse_object(ctx: Context, exchange: Exchange, text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CheckFailed(f"{what}: the content is not valid JSON ({exc}): {text[:300]!r}", exchange) from exc
    ctx.expect(isinstance(value, dict), f"{what}: the content is JSON but not an object: {text[:300]!r}", exchange)
    return value


@check("json_mode.parsable", "json_mode", "json_mode")
def json_mode_parsable(ctx: Context) -> None:
    """response_format json_object: a finished answer is a JSON object."""
    body = _json_body(ctx, 'Describe a cat as a JSON object with the keys "name" (a string) and "age" '
                      "(a number).", 80, {"type": "json_object"})
    exchange, data = ctx.ok_json(body)
    text = shared.text(data)
    finish = shared.choice(data).get("finish_reason")
    if finish == "length":
        # Cut off by max_tokens, as the doc allows: only the start can be judged.
        ctx.expect(text.strip() == "" or text.lstrip().startswith("{"),
                   f"JSON mode: the (cut off) content does not start a JSON object: {text[:300]!r}", exchange)
        return
    _parse_object(ctx, exchange, text, "JSON mode")


@check("json_mode.schema_valid", "json_mode", "json_mode")
def json_mode_schema_valid(ctx: Context) -> None:
    """response_format json_object with a schema: the answer is valid against the schema."""
    fmt = {"type": "json_object", "schema": NAME_SCHEMA}
    body = _json_body(ctx, 'Give a JSON object with one key, "name", whose value is the name of a cat.', 120, fmt)
    exchange, data = ctx.ok_json(body)
    finish = shared.choice(data).get("finish_reason")
    ctx.expect(finish == "stop", f"JSON mode with a schema: finish_reason {finish!r} within 120 tokens, "
               "expected 'stop' (a complete object)", exchange)
    value = _parse_object(ctx, exchange, shared.text(data), "JSON mode with a schema")
    errors = [e.message for e in jsonschema.Draft202012Validator(NAME_SCHEMA).iter_errors(value)]
    ctx.expect(not errors, f"JSON mode: {json.dumps(value)[:300]} breaks the schema {json.dumps(NAME_SCHEMA)}: "
               + "; ".join(errors), exchange)


# Not a JSON Schema: "type" must name a JSON type.
INVALID_SCHEMA = {"type": "no-such-type"}


@check("json_mode.invalid_schema", "json_mode", "json_mode")
def json_mode_invalid_schema(ctx: Context) -> None:
    """response_format json_object with a schema that is not a valid JSON Schema: refused (4xx, the
    spec says 400) naming response_format (not a 5xx, not an answer that no schema constrains)."""
    exchange = ctx.chat(_json_body(ctx, "Give a JSON object.", 8, {"type": "json_object", "schema": INVALID_SCHEMA}))
    ctx.expect_error(exchange, [400], param="response_format",
                     what=f"response_format schema {json.dumps(INVALID_SCHEMA)}")
