"""Server-sent events for streamed chat completions: the response that carries them, and one
`data:` event per JSON chunk."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

DONE_EVENT = b"data: [DONE]\n\n"
HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # a proxy in front (nginx) must pass each event on at once
}


def encode_event(payload: dict[str, Any]) -> bytes:
    """One data-only SSE event carrying `payload` as compact JSON (never spans lines)."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return b"data: " + body.encode("utf-8") + b"\n\n"


async def open_event_stream(request: web.Request) -> web.StreamResponse:
    """The streamed response, its headers already sent: events follow with `write(encode_event(...))`."""
    response = web.StreamResponse(headers=HEADERS)
    await response.prepare(request)
    return response
