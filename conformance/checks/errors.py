"""Auth and client mistakes: each gets the right 4xx in the error envelope, never a 5xx."""

from __future__ import annotations

import dataclasses
import json
import shlex
from typing import Any

from conformance.context import Context
from conformance.registry import CheckFailed, Skipped, check
from conformance.target import OMIT, REDACTED, Exchange

OVERSIZED_BYTES = 16 * 1024 * 1024
WRONG_KEY = "chatspec-wrong-key-0000"


def _needs_key(ctx: Context) -> None:
    if not ctx.target.api_key:
        raise Skipped("no API key given")


@check("auth.missing_key", "auth", "error")
def missing_key(ctx: Context) -> None:
    """No Authorization header: 401 in the error envelope."""
    _needs_key(ctx)
    exchange = ctx.chat(ctx.body(), auth=False)
    ctx.expect_error(exchange, [401], what="request without an Authorization header")


@check("auth.wrong_key", "auth", "error")
def wrong_key(ctx: Context) -> None:
    """A wrong bearer key: 401 in the error envelope."""
    _needs_key(ctx)
    key = WRONG_KEY if ctx.target.api_key != WRONG_KEY else WRONG_KEY + "-1"
    exchange = ctx.chat(ctx.body(), headers={"Authorization": f"Bearer {key}"})
    ctx.expect_error(exchange, [401], what="request with a wrong bearer key")


@check("errors.malformed_json", "errors", "error")
def malformed_json(ctx: Context) -> None:
    """A body that is not JSON (cut off mid-array): 400."""
    exchange = ctx.chat(b'{"model": "x", "messages": [')
    ctx.expect_error(exchange, [400], what="malformed JSON body")


@check("errors.wrong_content_type", "errors", "error")
def wrong_content_type(ctx: Context) -> None:
    """A valid JSON body sent as text/plain: 415 (the API takes application/json only)."""
    body = json.dumps(ctx.body()).encode("utf-8")
    exchange = ctx.chat(body, headers={"Content-Type": "text/plain"})
    ctx.expect_error(exchange, [415], what="Content-Type text/plain")


@check("errors.unknown_model", "errors", "error")
def unknown_model(ctx: Context) -> None:
    """A model the endpoint does not serve: 404 naming `model`."""
    exchange = ctx.chat(ctx.body(model="chatspec-no-such-model-3f9a"))
    ctx.expect_error(exchange, [404], param="model", what="unknown model")


@dataclasses.dataclass
class _BigBodyExchange(Exchange):
    """An exchange whose request body is too big to put in a report: its curl line rebuilds the
    body with python3, and the recorded request shows its shape instead of 16 MiB of filler."""

    filler_bytes: int = 0
    template: dict[str, Any] = dataclasses.field(default_factory=dict)

    def request_json(self) -> Any:
        return {"note": f"{self.body and len(self.body)} byte JSON body; the first user message is "
                        f"{self.filler_bytes} x 'a'", "template": self.template}

    def curl(self) -> str:
        script = ("import json,sys; b=json.loads(sys.argv[1]); "
                  f"b['messages'][0]['content']='a'*{self.filler_bytes}; sys.stdout.write(json.dumps(b))")
        parts = ["curl", "-sS", "-X", self.method, shlex.quote(self.url)]
        for name, value in self.headers.items():
            parts += ["-H", shlex.quote(f"{name}: {value}")]
        parts += ["--data-binary", "@-"]
        line = " ".join(parts).replace(shlex.quote(f"Authorization: Bearer {REDACTED}"),
                                       f'"Authorization: Bearer {REDACTED}"')
        return f"python3 -c {shlex.quote(script)} {shlex.quote(json.dumps(self.template))} | {line}"


@check("errors.oversized_body", "errors", "error")
def oversized_body(ctx: Context) -> None:
    """A ~16 MiB body (one giant message): 413, answered rather than a dropped connection."""
    template = ctx.body(messages=[{"role": "user", "content": ""}])
    body = json.dumps(ctx.body(messages=[{"role": "user", "content": "a" * OVERSIZED_BYTES}])).encode("utf-8")
    before = len(ctx.client.exchanges)
    error: OSError | None = None
    try:
        ctx.chat(body)  # urllib3 still reads the answer when the server closes while we send
    except OSError as exc:  # requests' exceptions are OSErrors too
        error = exc
    recorded = ctx.client.exchanges[before] if len(ctx.client.exchanges) > before else None
    if recorded is None:
        raise CheckFailed(f"could not send a {len(body)} byte body: {error}")
    exchange = _BigBodyExchange(**{f.name: getattr(recorded, f.name) for f in dataclasses.fields(Exchange)},
                                filler_bytes=OVERSIZED_BYTES, template=template)
    ctx.client.exchanges[before] = exchange  # keep the report small if a later failure cites it
    if error is not None:
        raise CheckFailed(
            f"the connection was reset while sending a {len(body)} byte body and no HTTP response could be "
            f"read ({error.__class__.__name__}: {error}); expected a 413 error envelope", exchange)
    ctx.expect_error(exchange, [413], what=f"a {len(body)} byte body")


@check("errors.missing_required", "errors", "error")
def missing_required(ctx: Context) -> None:
    """Each required field left out (model, messages, max_tokens): 400 naming it."""
    for name in ("model", "messages", "max_tokens"):
        exchange = ctx.chat(ctx.body(**{name: OMIT}))
        ctx.expect_error(exchange, [400], param=name, what=f"request without {name}")


@check("errors.non_object_body", "errors", "error")
def non_object_body(ctx: Context) -> None:
    """A JSON array instead of an object: 400."""
    exchange = ctx.chat(json.dumps([ctx.body()]).encode("utf-8"))
    ctx.expect_error(exchange, [400], what="a JSON array body")


@check("errors.error_before_stream", "errors", "error")
def error_before_stream(ctx: Context) -> None:
    """A bad parameter with stream: true is refused up front as a JSON envelope, not a 200 stream."""
    exchange = ctx.chat(ctx.body(stream=True, max_tokens="many"))
    ctx.expect(exchange.status != 200,
               "a streamed request with max_tokens 'many' was answered 200 "
               f"({exchange.content_type or 'no content type'}) instead of a 400 error envelope", exchange)
    ctx.expect(exchange.content_type == "application/json",
               f"the error came as {exchange.content_type!r}, not application/json", exchange)
    ctx.expect_error(exchange, [400], what="stream: true with max_tokens 'many'")
