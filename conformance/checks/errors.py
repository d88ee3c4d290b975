"""Auth and client mistakes: each gets the right 4xx in the error envelope, never a 5xx."""

from __future__ import annotations

import json

from conformance.context import Context
from conformance.registry import Skipped, check
from conformance.target import OMIT

OVERSIZED_BYTES = 16 * 1024 * 1024


def _needs_key(ctx: Context) -> None:
    if not ctx.target.api_key:
        raise Skipped("no API key given, so the endpoint's auth cannot be told apart from none")


@check("auth.missing_key", "auth", "error")
def missing_key(ctx: Context) -> None:
    """No Authorization header: 401 in the error envelope."""
    _needs_key(ctx)
    exchange = ctx.chat(ctx.body(), auth=False)
    ctx.expect_error(exchange, [401], what="request without a key")


@check("auth.wrong_key", "auth", "error")
def wrong_key(ctx: Context) -> None:
    """A wrong bearer key: 401 in the error envelope."""
    _needs_key(ctx)
    exchange = ctx.chat(ctx.body(), headers={"Authorization": "Bearer chatspec-wrong-key-0000"})
    ctx.expect_error(exchange, [401], what="request with a wrong key")


@check("errors.malformed_json", "errors", "error")
def malformed_json(ctx: Context) -> None:
    """A body that is not JSON: 400."""
    exchange = ctx.chat(b'{"model": "x", "messages": [', headers={})
    ctx.expect_error(exchange, [400], what="malformed JSON")


@check("errors.wrong_content_type", "errors", "error")
def wrong_content_type(ctx: Context) -> None:
    """A JSON body sent as text/plain: 415 (the doc requires application/json)."""
    body = json.dumps(ctx.body()).encode()
    exchange = ctx.chat(body, headers={"Content-Type": "text/plain"})
    ctx.expect_error(exchange, [415], what="Content-Type text/plain")


@check("errors.unknown_model", "errors", "error")
def unknown_model(ctx: Context) -> None:
    """A model the endpoint does not serve: 404 naming `model`."""
    exchange = ctx.chat(ctx.body(model="chatspec-no-such-model-3f9a"))
    ctx.expect_error(exchange, [404], param="model", what="unknown model")


@check("errors.oversized_body", "errors", "error")
def oversized_body(ctx: Context) -> None:
    """A 16 MiB body: 413 (a request-size cap must answer, not crash or hang)."""
    filler = "a" * OVERSIZED_BYTES
    body = json.dumps(ctx.body(messages=[{"role": "user", "content": filler}])).encode()
    try:
        exchange = ctx.chat(body)
    except OSError as exc:  # requests wraps most, but a reset mid-upload can surface raw
        ctx.fail(f"connection dropped while sending a {len(body)} byte body instead of answering 413: {exc}")
        return
    ctx.expect_error(exchange, [413], what=f"{len(body)} byte body")


@check("errors.missing_required", "errors", "error")
def missing_required(ctx: Context) -> None:
    """Each required field left out (model, messages, max_tokens): 400 naming it."""
    for name in ("model", "messages", "max_tokens"):
        exchange = ctx.chat(ctx.body(**{name: OMIT}))
        ctx.expect_error(exchange, [400], param=name, what=f"request without {name}")


@check("errors.non_object_body", "errors", "error")
def non_object_body(ctx: Context) -> None:
    """A JSON array instead of an object: 400."""
    exchange = ctx.chat(b"[1, 2, 3]")
    ctx.expect_error(exchange, [400], what="a JSON array body")


@check("errors.error_before_stream", "errors", "error")
def error_before_stream(ctx: Context) -> None:
    """A bad parameter with stream: true is refused up front as a JSON envelope, not a 200 stream."""
    exchange = ctx.chat(ctx.body(stream=True, max_tokens="many"))
    ctx.expect(exchange.status != 200, "a streamed request with max_tokens 'many' was answered 200", exchange)
    ctx.expect(exchange.content_type == "application/json",
               f"the error came as {exchange.content_type!r}, not application/json", exchange)
    ctx.expect_error(exchange, [400], param="max_tokens", what="stream with a bad max_tokens")
