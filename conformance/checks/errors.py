"""Auth and client mistakes: each is refused with a 4xx (must), never accepted nor a 5xx; the
exact status the spec names (400, 404, 413, 415) is a should; the error envelope's shape is
judged once, here (errors.envelope), never again by each check that provokes an error.

The requests are memoized per run, so a must check and its should twin share one exchange.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from collections.abc import Callable
from typing import Any

import spec
from conformance.context import Context, bare_param, error_param, names_param, schema_errors
from conformance.registry import CheckFailed, Skipped, check
from conformance.target import OMIT, REDACTED, Exchange

OVERSIZED_BYTES = 16 * 1024 * 1024
WRONG_KEY = "chatspec-wrong-key-0000"


def _sent(ctx: Context, key: str, send: Callable[[], Exchange]) -> Exchange:
    """The exchange `send` makes, sent once per run and shared by the checks that judge it."""
    return ctx.memo(f"errors.{key}", send)


def _needs_key(ctx: Context) -> None:
    if not ctx.target.api_key:
        raise Skipped("no API key given")


def _no_key(ctx: Context) -> Exchange:
    return _sent(ctx, "no_key", lambda: ctx.chat(ctx.body(), auth=False))


@check("auth.missing_key", "auth", "error")
def missing_key(ctx: Context) -> None:
    """No Authorization header: 401 (its envelope is judged by errors.envelope)."""
    _needs_key(ctx)
    ctx.expect_error(_no_key(ctx), [401], exact=True, what="request without an Authorization header")


@check("auth.wrong_key", "auth", "error")
def wrong_key(ctx: Context) -> None:
    """A wrong bearer key: 401."""
    _needs_key(ctx)
    key = WRONG_KEY if ctx.target.api_key != WRONG_KEY else WRONG_KEY + "-1"
    exchange = ctx.chat(ctx.body(), headers={"Authorization": f"Bearer {key}"})
    ctx.expect_error(exchange, [401], exact=True, what="request with a wrong bearer key")


def _malformed(ctx: Context) -> Exchange:
    return _sent(ctx, "malformed_json", lambda: ctx.chat(b'{"model": "x", "messages": ['))


def _text_plain(ctx: Context) -> Exchange:
    body = json.dumps(ctx.body()).encode("utf-8")
    return _sent(ctx, "text_plain", lambda: ctx.chat(body, headers={"Content-Type": "text/plain"}))


def _unknown_model(ctx: Context) -> Exchange:
    return _sent(ctx, "unknown_model", lambda: ctx.chat(ctx.body(model="chatspec-no-such-model-3f9a")))


def _missing(ctx: Context, name: str) -> Exchange:
    return _sent(ctx, f"missing.{name}", lambda: ctx.chat(ctx.body(**{name: OMIT})))


def _array_body(ctx: Context) -> Exchange:
    return _sent(ctx, "array_body", lambda: ctx.chat(json.dumps([ctx.body()]).encode("utf-8")))


def _bad_streamed(ctx: Context) -> Exchange:
    return _sent(ctx, "bad_streamed", lambda: ctx.chat(ctx.body(stream=True, max_tokens="many")))


def _out_of_range(ctx: Context) -> tuple[str, Any, Exchange] | None:
    """(param, value, exchange) for a value just above the top of a range (temperature's if any)."""
    ranges = spec.parameter_ranges(ctx.target.profile)
    for rng in sorted(ranges.values(), key=lambda r: r.path != "temperature"):
        high = rng.maximum if rng.maximum is not None else rng.exclusive_maximum
        if "." not in rng.path and rng.path not in ("n", "top_logprobs") and high is not None:
            value = int(high) + 1 if rng.kind == "integer" else float(high) + 1
            body = ctx.body(**{rng.path: value})
            return rng.path, value, _sent(ctx, f"out_of_range.{rng.path}", lambda body=body: ctx.chat(body))
    return None


def _exact(ctx: Context, exchange: Exchange, status: int, what: str, twin: str) -> None:
    """A refusal (a 4xx) must be exactly `status`; an answer that is no refusal is `twin`'s finding."""
    if not 400 <= exchange.status < 500:
        raise Skipped(f"{what} was answered {exchange.status}, not refused: {twin} judges that")
    ctx.expect(exchange.status == status, f"{what}: expected HTTP {status}, got {exchange.status}", exchange)


@check("errors.malformed_json", "errors", "error")
def malformed_json(ctx: Context) -> None:
    """A body that is not JSON (cut off mid-array): refused with a 4xx (the spec's 400)."""
    ctx.expect_error(_malformed(ctx), [400], what="malformed JSON body")


@check("errors.wrong_content_type", "errors", "error")
def wrong_content_type(ctx: Context) -> None:
    """A valid JSON body sent as text/plain: refused with a 4xx (the spec's 415: application/json only)."""
    ctx.expect_error(_text_plain(ctx), [415], what="Content-Type text/plain")


@check("errors.status_415", "errors", "status", severity="should")
def status_415(ctx: Context) -> None:
    """A JSON body sent as text/plain is answered exactly 415 Unsupported Media Type."""
    _exact(ctx, _text_plain(ctx), 415, "Content-Type text/plain", "errors.wrong_content_type")


@check("errors.unknown_model", "errors", "error")
def unknown_model(ctx: Context) -> None:
    """A model the endpoint does not serve: refused with a 4xx naming `model` (the spec's 404)."""
    ctx.expect_error(_unknown_model(ctx), [404], param="model", what="unknown model")


@check("errors.status_404_model", "errors", "status", severity="should")
def status_404_model(ctx: Context) -> None:
    """A model the endpoint does not serve is answered exactly 404 Not Found."""
    _exact(ctx, _unknown_model(ctx), 404, "unknown model", "errors.unknown_model")


@check("errors.status_400", "errors", "status", severity="should")
def status_400(ctx: Context) -> None:
    """Invalid requests (malformed JSON, a JSON array, a missing field, a value out of range, a wrong
    type with stream: true) that are refused are refused with exactly 400 Bad Request, not another
    4xx (e.g. 422). One accepted or answered 5xx is the finding of the must check of its rule."""
    samples = [("malformed JSON", _malformed(ctx)), ("a JSON array body", _array_body(ctx)),
               ("no max_tokens", _missing(ctx, "max_tokens")), ("stream: true with max_tokens 'many'",
                                                              _bad_streamed(ctx))]
    found = _out_of_range(ctx)
    if found is not None:
        samples.append((f"{found[0]}={found[1]!r}", found[2]))
    refused = [(what, exchange) for what, exchange in samples if 400 <= exchange.status < 500]
    if not refused:
        raise Skipped("no invalid request was refused with a 4xx: the must checks of their rules judge that")
    wrong = [(what, exchange) for what, exchange in refused if exchange.status != 400]
    ctx.expect(not wrong, "expected HTTP 400 for every invalid request, got "
               + "; ".join(f"{exchange.status} for {what}" for what, exchange in wrong),
               wrong[0][1] if wrong else None)


@check("errors.envelope", "errors", "envelope")
def envelope(ctx: Context) -> None:
    """Every error is the spec's envelope, {"error": {"message", "type", "param", "code"}}, with
    `param` naming the field to blame: judged here once, for a malformed body, a missing field,
    a value out of range, an unknown model and (with a key) a missing key."""
    samples: list[tuple[str, Exchange, str | None]] = [
        ("malformed JSON", _malformed(ctx), None), ("no messages", _missing(ctx, "messages"), "messages"),
        ("unknown model", _unknown_model(ctx), "model")]
    found = _out_of_range(ctx)
    if found is not None:
        samples.append((f"{found[0]}={found[1]!r}", found[2], found[0]))
    if ctx.target.api_key:
        samples.append(("no Authorization header", _no_key(ctx), None))
    for what, exchange, param in samples:
        if not 400 <= exchange.status < 500:
            continue  # accepted, or a server error: the must check of that rule says so
        try:
            data = exchange.json()
        except ValueError:
            ctx.fail(f"{what}: HTTP {exchange.status} error body is not JSON", exchange)
        problems = schema_errors("ErrorResponse", data)
        ctx.expect(not problems, f"{what}: HTTP {exchange.status} error envelope breaks the spec: "
                   + "; ".join(problems), exchange)
        named = error_param(data)
        ctx.expect(param is None or (named is not None and names_param(named, param)),
                   f"{what}: the envelope's param is {named!r}, expected {param!r}", exchange)


@check("errors.param_bare_name", "errors", "envelope", severity="should")
def param_bare_name(ctx: Context) -> None:
    """An error's `param` names the parameter as the request names it (`max_tokens`), not by a
    validator's location (`body.max_tokens`, FastAPI/pydantic's loc). Judged here once: every
    other check accepts the location form as naming the parameter (spec x-decisions)."""
    samples: list[tuple[str, Exchange]] = [("no messages", _missing(ctx, "messages"))]
    found = _out_of_range(ctx)
    if found is not None:
        samples.append((f"{found[0]}={found[1]!r}", found[2]))
    named = [(what, exchange, error_param(_json_or_none(exchange))) for what, exchange in samples
             if 400 <= exchange.status < 500]
    named = [(what, exchange, param) for what, exchange, param in named if param is not None]
    if not named:
        raise Skipped("no refused request named a param (errors.envelope judges that)")
    for what, exchange, param in named:
        ctx.expect(bare_param(param) == param,
                   f"{what}: error.param is {param!r}, a validator's location; the parameter's name is "
                   f"{bare_param(param)!r}", exchange)


def _json_or_none(exchange: Exchange) -> Any:
    try:
        return exchange.json()
    except ValueError:
        return None


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


def _send_oversized(ctx: Context) -> tuple[Exchange | None, OSError | None, int]:
    """Send the ~16 MiB body once: (the exchange kept small for reports, the send error, body size)."""
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
        return None, error, len(body)
    exchange = _BigBodyExchange(**{f.name: getattr(recorded, f.name) for f in dataclasses.fields(Exchange)},
                                filler_bytes=OVERSIZED_BYTES, template=template)
    ctx.client.exchanges[before] = exchange  # keep the report small if a later failure cites it
    return exchange, error, len(body)


def _oversized(ctx: Context) -> Exchange:
    """The answered oversized request; fails when none could be sent or read."""
    exchange, error, size = _sent(ctx, "oversized", lambda: _send_oversized(ctx))
    if exchange is None:
        raise CheckFailed(f"could not send a {size} byte body: {error}")
    if error is not None:
        raise CheckFailed(
            f"the connection was reset while sending a {size} byte body and no HTTP response could be "
            f"read ({error.__class__.__name__}: {error}); expected a 413 error envelope", exchange)
    return exchange


@check("errors.oversized_body", "errors", "error", may_wedge=True)
def oversized_body(ctx: Context) -> None:
    """A ~16 MiB body (one giant message): refused with a 4xx (the spec's 413), answered rather than
    a dropped connection. It runs last: an endpoint may spend minutes on such a body."""
    ctx.expect_error(_oversized(ctx), [413], what=f"a body over {OVERSIZED_BYTES} bytes")


@check("errors.status_413", "errors", "status", severity="should", may_wedge=True)
def status_413(ctx: Context) -> None:
    """The ~16 MiB body is answered exactly 413 Content Too Large (the same request as oversized_body)."""
    _exact(ctx, _oversized(ctx), 413, f"a body over {OVERSIZED_BYTES} bytes", "errors.oversized_body")


@check("errors.missing_required", "errors", "error")
def missing_required(ctx: Context) -> None:
    """Each required field left out (model, messages, max_tokens): refused with a 4xx naming it."""
    for name in ("model", "messages", "max_tokens"):
        ctx.expect_error(_missing(ctx, name), [400], param=name, what=f"request without {name}")


@check("errors.non_object_body", "errors", "error")
def non_object_body(ctx: Context) -> None:
    """A JSON array instead of an object: refused with a 4xx."""
    ctx.expect_error(_array_body(ctx), [400], what="a JSON array body")


@check("errors.error_before_stream", "errors", "error")
def error_before_stream(ctx: Context) -> None:
    """A bad parameter with stream: true is refused up front as a JSON error, not a 200 stream."""
    exchange = _bad_streamed(ctx)
    ctx.expect(exchange.status != 200,
               "a streamed request with max_tokens 'many' was answered 200 "
               f"({exchange.content_type or 'no content type'}) instead of a 400 error envelope", exchange)
    ctx.expect(exchange.content_type == "application/json",
               f"the error came as {exchange.content_type!r}, not application/json", exchange)
    ctx.expect_error(exchange, [400], what="stream: true with max_tokens 'many'")
