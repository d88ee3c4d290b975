"""HTTP concerns every route shares: the bearer key, reading a body within its limits, and the
middlewares that put every failure in the error envelope and count every answer.

Why apart from the handlers: none of this knows about chat completions, and each rule (a 413, a
408, a 401) is tested on its own (tests/test_ref_http.py, tests/test_hostile_input.py).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
import aiohttp.http_exceptions
from aiohttp import web

from reference_server import recording
from reference_server.errors import ApiError
from reference_server.metrics import ServerMetrics

log = logging.getLogger("reference_server")

DEFAULT_MAX_BODY_BYTES = 1 << 20
# Deeper JSON is refused before validation: recursive code (jsonschema, the grammar converter)
# would otherwise hit Python's recursion limit and answer 500. No real request comes near it.
MAX_NESTING = 64


def unusable_field(body: Any, limit: int) -> tuple[str, str] | None:
    """(top-level field, why) for a part of `body` no engine can take, or None.

    Two things pass JSON parsing and break later: nesting deeper than `limit` levels, and a lone
    UTF-16 surrogate written as an escape ("\\ud800"), which no UTF-8 text can hold. Iterative,
    so that it cannot itself run out of stack on the input it guards against.
    """
    if not isinstance(body, dict):
        return None
    for key, value in body.items():
        stack = [(key, 0), (value, 1)]
        while stack:
            item, depth = stack.pop()
            if depth > limit:
                return str(key), f"is nested more than {limit} levels deep"
            if isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return str(key).encode("utf-8", "backslashreplace").decode(), (
                        "holds a lone UTF-16 surrogate, which UTF-8 text cannot carry")
            elif isinstance(item, dict):
                stack.extend((child, depth + 1) for pair in item.items() for child in pair)
            elif isinstance(item, list):
                stack.extend((child, depth + 1) for child in item)
    return None


@dataclass(frozen=True)
class BearerAuth:
    """The keys a request may present as 'Authorization: Bearer <key>' (UTF-8 bytes)."""

    keys: tuple[bytes, ...]
    required: bool = True

    @classmethod
    def of(cls, keys: tuple[str, ...], required: bool) -> BearerAuth:
        return cls(tuple(key.encode("utf-8") for key in keys), required)

    def check(self, request: web.Request) -> None:
        """401 unless the bearer key matches one of ours (constant-time comparison)."""
        if not self.required:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "Missing bearer API key: send 'Authorization: Bearer <key>'.",
                type="authentication_error",
                code="missing_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        presented = token.strip().encode("utf-8")
        # Compare against every key so timing does not reveal which one (or whether any) matched.
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(presented, key)
        if not matched:
            raise ApiError(
                401,
                "Invalid API key.",
                type="authentication_error",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )


async def read_json(request: web.Request, max_body_bytes: int, timeout_s: float) -> Any:
    """The body as JSON, after Content-Type (415), size (413) and syntax (400) checks."""
    if request.content_type != "application/json":
        raise ApiError(
            415,
            f"Content-Type must be application/json, not {request.content_type or 'absent'!r}.",
            code="unsupported_media_type",
        )
    too_big = ApiError(
        413,
        f"The request body is over {max_body_bytes} bytes.",
        code="request_too_large",
    )
    if request.content_length is not None and request.content_length > max_body_bytes:
        raise too_big
    try:
        raw = await asyncio.wait_for(request.read(), timeout_s)
    except web.HTTPRequestEntityTooLarge as exc:
        raise too_big from exc
    except TimeoutError as exc:  # a slow or stalled sender holds a socket, never the server
        raise ApiError(408, f"The request body did not arrive within {timeout_s:g} s.",
                       code="request_timeout") from exc
    except (ConnectionError, aiohttp.ClientPayloadError, aiohttp.http_exceptions.HttpProcessingError) as exc:
        raise ApiError(400, f"The request body ended early: {exc}", code="incomplete_body") from exc
    if len(raw) > max_body_bytes:
        raise too_big
    try:
        # Strict UTF-8 first: json.loads(bytes) lets encoded surrogates (ED A0 80) through.
        body = json.loads(raw.decode("utf-8"))
        recording.note(body=body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"The body is not valid JSON: {exc}", code="invalid_json") from exc
    except RecursionError as exc:  # deeper than Python's decoder can go
        raise ApiError(400, "The body is nested too deeply to parse.", code="invalid_json") from exc
    unusable = unusable_field(body, MAX_NESTING)
    if unusable is not None:
        param, why = unusable
        raise ApiError(400, f"'{param}' {why}.", param=param, code="invalid_value")
    return body


@web.middleware
async def error_envelope(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every failure leaves in the envelope; client mistakes are 4xx, never 5xx."""
    try:
        return await handler(request)
    except ApiError as exc:
        response = exc.response()
        if exc.status == 408 or exc.code == "incomplete_body":
            response.force_close()  # what is left of that body on the socket is not a next request
        return response
    except web.HTTPRequestEntityTooLarge:
        return ApiError(413, "The request body is too large.", code="request_too_large").response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        return ApiError(
            exc.status, exc.reason or "error", type=kind, code=exc.reason.lower().replace(" ", "_")
        ).response()
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return ApiError(500, "Internal server error.", type="server_error", code="internal_error").response()


def count_responses(metrics: ServerMetrics) -> Any:
    """A middleware counting every API answer by status code (outside the envelope: it sees 4xx and
    5xx too); /health and /metrics, which monitors poll, are not counted."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        if request.path not in ("/health", "/metrics"):
            metrics.responses.labels(str(response.status)).inc()
        return response

    return middleware
