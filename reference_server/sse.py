"""Server-sent-event framing for streamed chat completions: one `data:` event per JSON chunk."""

from __future__ import annotations

import json
from typing import Any

DONE_EVENT = b"data: [DONE]\n\n"


def encode_event(payload: dict[str, Any]) -> bytes:
    """One data-only SSE event carrying `payload` as compact JSON (never spans lines)."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return b"data: " + body.encode("utf-8") + b"\n\n"
