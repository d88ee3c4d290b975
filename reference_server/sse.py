"""Server-sent events for streamed chat completions: the response that carries them, and one
`data:` event per JSON chunk."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

DONE_EVENT = b"data: [DONE]\n\n"
HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # a proxy in front (nginx) must pass each event on at once
}


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def encode_event(payload: dict[str, Any]) -> bytes:
    """One data-only SSE event carrying `payload` as compact JSON (never spans lines)."""
    return b"data: " + _json(payload).encode("utf-8") + b"\n\n"


_MARKER = "\x00text\x00"  # stands for the text while a template is made (JSON writes it as \u0000text\u0000)


class TextEvents:
    """`encode_event(make(key, text))` for the many texts of one response, the same bytes: the
    event is made once per key with a marker for the text, and after that only the text is
    encoded into it. Why: a streamed token's chunk differs from the last one in its text alone,
    and with the template the event loop's CPU a token (handler alone) went from ~55 to 25-46 us,
    work that takes a core from the model (issue 24). A template whose marker is not found
    exactly once (`make` wrote the text twice, or the marker is in a fixed field) is not used.
    """

    def __init__(self, make: Callable[[int, str], dict[str, Any]]) -> None:
        self._make = make
        self._templates: dict[int, tuple[bytes, bytes] | None] = {}

    def event(self, key: int, text: str) -> bytes:
        if key not in self._templates:
            parts = encode_event(self._make(key, _MARKER)).split(_json(_MARKER).encode("utf-8"))
            self._templates[key] = (parts[0], parts[1]) if len(parts) == 2 else None
        template = self._templates[key]
        if template is None:
            return encode_event(self._make(key, text))
        return template[0] + _json(text).encode("utf-8") + template[1]


async def open_event_stream(request: web.Request) -> web.StreamResponse:
    """The streamed response, its headers already sent: events follow with `write(encode_event(...))`."""
    response = web.StreamResponse(headers=HEADERS)
    await response.prepare(request)
    return response
