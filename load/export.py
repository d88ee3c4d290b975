"""`requests.jsonl`: one line per request of every step, for analyses of one's own (and for
`python -m load compare`, which bootstraps its confidence intervals from these raw samples).

Fields (times in seconds from the start of the request's step in the process that sent it, `null`
where the moment never came; durations in milliseconds):

- `step`, `step_label`, `worker`: which step (0-based) and which load process sent it;
- `in_window`: sent inside the measured window (after the warm-up): the requests the step's
  latencies and error rate are computed from;
- `intended_s` (open loop: when the schedule wanted it sent), `send_s`, `first_byte_s`,
  `first_token_s` (a token of any kind: content, reasoning or tool call), `first_content_s` (the
  first content token: later than `first_token_s` when a model reasons first), `end_s`;
- `token_ms`: arrival of every token event after `send_s`, of any kind (so TTFT is `token_ms[0]`
  and the inter-token gaps are its differences);
- `stream`, `status` (HTTP, null when none came), `ok`, `error_kind` (see load.records.ERROR_KINDS),
  `error`, `retry_after` (a 429's header), `retried` (sent again after a stale keep-alive connection);
- `prompt_tokens`, `completion_tokens` (the server's usage, reasoning tokens included),
  `reasoning_tokens` (its usage.completion_tokens_details.reasoning_tokens; null when not sent);
- counted by us: `token_events` (every kind), `content_events`, `reasoning_events`
  (delta.reasoning_content or delta.reasoning), `tool_call_events`;
- `request_id`: the answer's `id` when the endpoint gave one;
- what the workload asked for: `max_tokens`, `requested_prompt_tokens` (null when lengths were not
  planned in tokens), `prefix_blocks` ([block id, tokens] of the shared prefix blocks it carried),
  `turn` (multi-turn sessions, 1-based; null otherwise).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from load.metrics import Window
from load.records import RequestRecord

FILE_NAME = "requests.jsonl"


def _s(ns: int | None) -> float | None:
    return None if ns is None else round(ns / 1e9, 6)


def request_line(record: RequestRecord, step: int, label: str, window: Window) -> dict[str, Any]:
    """One request as plain JSON-able data (the fields above)."""
    return {
        "step": step, "step_label": label, "worker": record.worker,
        "in_window": window.start_ns <= record.send_ns < window.end_ns,
        "intended_s": _s(record.intended_ns), "send_s": _s(record.send_ns), "first_byte_s": _s(record.first_byte_ns),
        "first_token_s": _s(record.first_token_ns), "first_content_s": _s(record.first_content_ns),
        "end_s": _s(record.end_ns),
        "token_ms": [round((t - record.send_ns) / 1e6, 3) for t in record.token_ns],
        "stream": record.stream, "status": record.status, "ok": record.ok, "error_kind": record.error_kind,
        "error": record.error, "retry_after": record.retry_after, "retried": record.retried,
        "prompt_tokens": record.usage_prompt, "completion_tokens": record.usage_completion,
        "reasoning_tokens": record.usage_reasoning, "token_events": record.chunk_tokens,
        "content_events": record.content_events, "reasoning_events": record.reasoning_events,
        "tool_call_events": record.tool_call_events, "request_id": record.request_id,
        "max_tokens": record.max_tokens, "requested_prompt_tokens": record.requested_prompt_tokens,
        "prefix_blocks": record.prefix_blocks, "turn": record.turn,
    }


def write_requests(outcomes: Iterable[Any], directory: Path | str) -> Path:
    """requests.jsonl in `directory`, every record of every step, in send order per step."""
    path = Path(directory) / FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for outcome in outcomes:
            for record in sorted(outcome.records, key=lambda r: (r.send_ns, r.worker)):
                line = request_line(record, outcome.spec.index, outcome.spec.label, outcome.window)
                fh.write(json.dumps(line, ensure_ascii=False) + "\n")
    return path


def read_requests(path: Path | str) -> Iterator[dict[str, Any]]:
    """The lines of a requests.jsonl file."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)
