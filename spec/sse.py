"""A strict server-sent-events parser (WHATWG "event stream interpretation"): the stream's wire
format, read the same way by the conformance checks and the load tool's token timing.

SDK parsers are lenient; this one follows the WHATWG rules for what is dispatched and keeps
everything a checker needs to fail a stream: parser warnings, invalid UTF-8 with byte positions,
an unterminated last event, the line endings seen, and each event's raw block, raw data bytes and
byte offsets (so a UTF-8 character split across two events shows up, see `split_utf8_events`).

Lines are split on the raw bytes and then decoded: CR and LF never occur inside a UTF-8 sequence,
so this gives the same text as decoding the whole stream first, while keeping byte offsets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

_BOM = b"\xef\xbb\xbf"
_EOL = re.compile(rb"\r\n|\r|\n")
_EOL_KIND = {b"\r\n": "CRLF", b"\n": "LF", b"\r": "CR"}
MAX_UTF8_ERRORS = 1000  # recorded one by one; past this a single summary entry follows


@dataclass
class SSEEvent:
    """One dispatched event, with where it sits in the raw body (`body[start:end] == raw`)."""

    data: str
    data_bytes: bytes
    event: str = "message"
    id: str | None = None
    retry: int | None = None
    start: int = 0
    end: int = 0
    raw: bytes = b""


@dataclass
class SSEParseResult:
    """Everything the parser saw; a conforming stream has no warnings, no invalid UTF-8 and no
    trailing incomplete event."""

    events: list[SSEEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    invalid_utf8: list[str] = field(default_factory=list)
    trailing_incomplete: str | None = None
    line_endings: set[str] = field(default_factory=set)


class SSEParser:
    """Incremental parser: `feed()` bytes as they arrive, `close()` at the end of the stream.

    Both return the events dispatched by that call; `result` accumulates everything.
    """

    def __init__(self) -> None:
        self.result = SSEParseResult()
        self._buffer = bytearray()
        self._offset = 0  # stream offset of _buffer[0]
        self._bom_checked = False
        self._closed = False
        self._utf8_errors = 0
        # the event being built (WHATWG's buffers) and the raw block it comes from
        self._data: list[bytes] = []
        self._event_type = ""
        self._last_id: str | None = None
        self._retry: int | None = None
        self._block = bytearray()
        self._block_start: int | None = None
        self._block_has_fields = False

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Parse the complete lines in `data` plus what was buffered; return dispatched events."""
        if self._closed:
            raise RuntimeError("feed() after close()")
        self._buffer += data
        if not self._bom_checked:
            if len(self._buffer) < len(_BOM) and _BOM.startswith(bytes(self._buffer)):
                return []  # could still be a BOM split across feeds
            self._bom_checked = True
            if self._buffer.startswith(_BOM):
                del self._buffer[: len(_BOM)]
                self._offset += len(_BOM)
        return self._drain(final=False)

    def close(self) -> list[SSEEvent]:
        """End of stream. A last line without a line ending still counts as a line; an event
        without its terminating blank line is not dispatched (WHATWG) but kept, as raw text, in
        `result.trailing_incomplete`."""
        if self._closed:
            return []
        self._closed = True
        self._bom_checked = True
        events = self._drain(final=True)
        if self._buffer:
            start = self._offset
            self.result.warnings.append(f"the last line has no line ending (byte {start})")
            line = bytes(self._buffer)
            self._offset += len(line)
            self._buffer.clear()
            self._line(line, line, start, self._offset)
        if self._block_start is not None:
            text = bytes(self._block).decode("utf-8", errors="replace")
            if self._block_has_fields:
                self.result.trailing_incomplete = text
                self.result.warnings.append(
                    f"stream ended inside an event (no blank line after it, byte {self._block_start})")
            else:
                self.result.warnings.append(
                    f"stream ends with comment lines not followed by a blank line (byte {self._block_start})")
        return events

    def _drain(self, final: bool) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        buffer, pos = self._buffer, 0
        while (match := _EOL.search(buffer, pos)) is not None:
            if match.end() == len(buffer) and buffer[-1] == 0x0D and not final:
                break  # a CR at the end may be the first half of a CRLF split across feeds
            self.result.line_endings.add(_EOL_KIND[match.group()])
            event = self._line(bytes(buffer[pos:match.start()]), bytes(buffer[pos:match.end()]),
                               self._offset + pos, self._offset + match.end())
            if event is not None:
                events.append(event)
            pos = match.end()
        if pos:
            del buffer[:pos]
            self._offset += pos
        return events

    def _decode(self, raw: bytes, start: int) -> str:
        """Decode like errors="replace", recording each invalid sequence with its stream offset."""
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
        parts: list[str] = []
        pos = 0
        while pos < len(raw):
            if self._utf8_errors >= MAX_UTF8_ERRORS:
                parts.append(raw[pos:].decode("utf-8", errors="replace"))
                if self._utf8_errors == MAX_UTF8_ERRORS:
                    self.result.invalid_utf8.append(f"more invalid UTF-8 from byte {start + pos} on; not itemized")
                    self._utf8_errors += 1
                break
            try:
                parts.append(raw[pos:].decode("utf-8"))
                break
            except UnicodeDecodeError as exc:
                parts.append(raw[pos:pos + exc.start].decode("utf-8"))
                parts.append("\ufffd")
                self.result.invalid_utf8.append(
                    f"bytes {start + pos + exc.start}-{start + pos + exc.end}: {exc.reason} "
                    f"({raw[pos + exc.start:pos + exc.end]!r})")
                self._utf8_errors += 1
                pos += exc.end
        return "".join(parts)

    def _line(self, line: bytes, raw: bytes, start: int, end: int) -> SSEEvent | None:
        """Interpret one line (`line` without its end, `raw` with it) at stream bytes [start, end)."""
        if not line:
            self._block += raw
            return self._dispatch(end)
        if self._block_start is None:
            self._block_start = start
        self._block += raw
        text = self._decode(line, start)
        if text.startswith(":"):
            self.result.comments.append(text[1:])
            return None
        self._block_has_fields = True
        name, colon, value = text.partition(":")
        raw_value = line.partition(b":")[2] if colon else b""
        if value.startswith(" "):
            value, raw_value = value[1:], raw_value[1:]
        if name == "data":
            self._data.append(raw_value)
        elif name == "event":
            self._event_type = value
        elif name == "id":
            if "\0" in value:
                self.result.warnings.append(f"id containing NUL ignored (byte {start})")
            else:
                self._last_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self._retry = int(value)
            else:
                self.result.warnings.append(f"retry {value!r} is not ASCII digits; ignored (byte {start})")
        else:
            self.result.warnings.append(f"unknown field {name!r} ignored (byte {start})")
        return None

    def _dispatch(self, end: int) -> SSEEvent | None:
        """A blank line: dispatch the event unless its data buffer is empty; reset the buffers."""
        start = self._block_start if self._block_start is not None else end - len(self._block)
        raw = bytes(self._block)
        self._block.clear()
        self._block_start, self._block_has_fields = None, False
        data, self._data = self._data, []
        event_type, self._event_type = self._event_type or "message", ""
        retry, self._retry = self._retry, None
        if not data:
            return None
        data_bytes = b"\n".join(data)
        event = SSEEvent(
            data=data_bytes.decode("utf-8", errors="replace"), data_bytes=data_bytes, event=event_type,
            id=self._last_id, retry=retry, start=start, end=end, raw=raw,
        )
        self.result.events.append(event)
        return event


def parse_sse(body: bytes) -> SSEParseResult:
    """Parse a whole response body (what a non-incremental checker has)."""
    parser = SSEParser()
    parser.feed(body)
    parser.close()
    return parser.result


def parse_sse_chunks(chunks: Iterable[bytes]) -> SSEParseResult:
    """Parse a body delivered in chunks; same result as `parse_sse(b"".join(chunks))`."""
    parser = SSEParser()
    for chunk in chunks:
        parser.feed(chunk)
    parser.close()
    return parser.result


def split_utf8_events(events: Sequence[SSEEvent]) -> list[int]:
    """Indices of events whose data bytes are not valid UTF-8 on their own: how a character a
    server split across two events shows up (each half is an invalid sequence)."""
    bad = []
    for index, event in enumerate(events):
        try:
            event.data_bytes.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(index)
    return bad
