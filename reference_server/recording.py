"""`--record PATH`: the server as a witness of the traffic it received.

A load generator's own counters can say all went well while the endpoint saw far fewer requests,
or saw them late. The server is the one place that knows what arrived and when, so with
`--record` every request on a chat-completions path appends one JSON line to PATH:

- `arrival_ns`: `time.time_ns()` when the request reached the application (its headers parsed, the
  body not yet read): the first thing the outermost middleware does;
- `end_ns`: `time.time_ns()` when the answer was written to the end, or the client went away;
- `path`, `status` (the HTTP status sent; null when the client went away before any answer),
  `client_gone` (the handler was cancelled because the client disconnected);
- `body`: the request's JSON body, parsed; the raw text (as far as it arrived) when it is not JSON;
- `response_id`: the answer's `id` (`chatcmpl-...`) when one was made, to join with a client's records;
- `client`: the client's "host:port" (one TCP connection), `pid`: the server process.

Every process of `--workers N` appends to the same file: one `os.write` of a whole line on an
O_APPEND descriptor, which the kernel never interleaves with another process's. The line is
written after the answer is finished, so recording adds nothing to a request's own latency, and
nothing is buffered: a reader sees every finished request at once (and at shutdown).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from contextvars import ContextVar
from typing import Any

from aiohttp import web

log = logging.getLogger("reference_server")

# What the handler parsed and made, for the record of the request it serves (None: not recording).
_NOTES: ContextVar[dict[str, Any] | None] = ContextVar("chatspec_record_notes", default=None)


def note(**fields: Any) -> None:
    """Hand the record what only the handler knows (the parsed body, the answer's id); a no-op when
    the server is not recording. The handler runs in the recording middleware's task, so it sees
    the notes of its own request."""
    notes = _NOTES.get()
    if notes is not None:
        notes.update(fields)


class Recorder:
    """An O_APPEND file that takes one whole JSON line per write."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, record: dict[str, Any]) -> None:
        """Append `record` as one line, in one system call (so lines of several processes never mix)."""
        if self._fd is None:
            return
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        written = os.write(self._fd, line)
        if written != len(line):  # a regular file takes it whole; anything else would tear a line
            raise OSError(f"--record {self.path}: wrote {written} of {len(line)} bytes")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


async def _body(request: web.Request, notes: dict[str, Any]) -> Any:
    """What the client sent: the handler's parsed JSON, else the raw text that arrived. Never waits
    for the network: a body the handler did not read whole gives what is buffered."""
    if "body" in notes:
        return notes["body"]
    try:
        if request.can_read_body:  # the handler did not read it all (refused first, timed out)
            raw = request.content.read_nowait()
        else:
            raw = await request.read()  # the handler's read, cached (b"" when there was no body)
    except RuntimeError:  # someone still waits on the stream: there is nothing settled to record
        raw = b""
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _client(request: web.Request) -> str | None:
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else None


def recording_middleware(recorder: Recorder, paths: frozenset[str]) -> Any:
    """The outermost middleware: stamp the arrival, let the request be served and its answer be
    written to the end, then append its record. Requests on other paths pass untouched."""

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path not in paths:
            return await handler(request)
        arrival_ns = time.time_ns()
        status: int | None = None
        gone = False
        notes: dict[str, Any] = {}
        token = _NOTES.set(notes)
        try:
            response = await handler(request)
            if not response.prepared:  # a plain answer: send it now, so that end_ns is when it was sent
                await response.prepare(request)
                await response.write_eof()
            status = response.status
            return response
        except asyncio.CancelledError:  # handler_cancellation: the client went away
            gone = True
            raise
        except web.HTTPException as exc:  # anything the error envelope lets through (redirects)
            status = exc.status
            raise
        finally:
            end_ns = time.time_ns()
            _NOTES.reset(token)
            try:
                recorder.write({
                    "arrival_ns": arrival_ns, "end_ns": end_ns, "path": request.path, "status": status,
                    "client_gone": gone, "body": await _body(request, notes),
                    "response_id": notes.get("response_id"), "client": _client(request), "pid": os.getpid(),
                })
            except OSError as exc:  # the record is lost, never the answer (or a client's disconnect)
                log.error("--record %s: could not write a request's record: %s", recorder.path, exc)

    return record
