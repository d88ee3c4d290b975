"""A strict server-sent-events parser (WHATWG "event stream interpretation") for conformance.

SDK parsers are lenient; this one keeps everything a checker needs to fail a stream: parser
warnings, invalid UTF-8, an unterminated last event, the line endings seen, and each event's
raw data bytes and byte offsets (so a character split across two events shows up).
"""

from __future__ import annotations

from dataclasses import dataclass, field

_BOM = b"\xef\xbb\xbf"


@dataclass
class SSEEvent:
    """One dispatched event."""

    data: str
    data_bytes: bytes
    event: str = "message"
    id: str | None = None
    retry: int | None = None
    start: int = 0
    end: int = 0


@dataclass
class SSEParseResult:
    """Everything the parser saw."""

    events: list[SSEEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    invalid_utf8: list[str] = field(default_factory=list)
    trailing_incomplete: str | None = None
    line_endings: set[str] = field(default_factory=set)


class SSEParser:
    """Incremental parser: `feed()` bytes as they arrive, `close()` at the end of the stream."""

    def __init__(self) -> None:
        self.result = SSEParseResult()
        self._buffer = bytearray()
        self._offset = 0  # stream offset of _buffer[0]
        self._started = False
        self._data: list[bytes] = []
        self._event_type = ""
        self._last_id: str | None = None
        self._retry: int | None = None
        self._event_start: int | None = None

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Parse the complete lines in `data` (plus what was buffered); return dispatched events."""
        self._buffer += data
        if not self._started:
            if len(self._buffer) < len(_BOM) and _BOM.startswith(bytes(self._buffer)):
                return []
            self._started = True
            if self._buffer.startswith(_BOM):
                del self._buffer[: len(_BOM)]
                self._offset += len(_BOM)
        return self._drain(final=False)

    def close(self) -> list[SSEEvent]:
        """End of stream: a last line without its end is still a line; an unterminated event is
        not dispatched (WHATWG) but recorded as `trailing_incomplete`."""
        self._started = True
        events = self._drain(final=True)
        if self._buffer:
            self._line(bytes(self._buffer), self._offset, self._offset + len(self._buffer))
            self._offset += len(self._buffer)
            self._buffer.clear()
        if self._data or self._event_start is not None:
            text = b"\n".join(self._data).decode("utf-8", errors="replace")
            self.result.trailing_incomplete = text
            self.result.warnings.append("stream ended inside an event (no blank line after it)")
        return events

    def _drain(self, final: bool) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        while True:
            cr = self._buffer.find(b"\r")
            lf = self._buffer.find(b"\n")
            if cr < 0 and lf < 0:
                return events
            if cr >= 0 and (lf < 0 or cr < lf):
                if cr == len(self._buffer) - 1 and not final:
                    return events  # a CRLF may be split across feeds: wait for the next byte
                if cr + 1 < len(self._buffer) and self._buffer[cr + 1] == 0x0A:
                    end, size, kind = cr, 2, "CRLF"
                else:
                    end, size, kind = cr, 1, "CR"
            else:
                end, size, kind = lf, 1, "LF"
            self.result.line_endings.add(kind)
            line = bytes(self._buffer[:end])
            start = self._offset
            del self._buffer[: end + size]
            self._offset += end + size
            event = self._line(line, start, self._offset)
            if event is not None:
                events.append(event)
                self.result.events.append(event)

    def _line(self, raw: bytes, start: int, end: int) -> SSEEvent | None:
        if not raw:
            return self._dispatch(end)
        if self._event_start is None:
            self._event_start = start
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.result.invalid_utf8.append(f"bytes {start + exc.start}-{start + exc.end}: {exc.reason}")
            line = raw.decode("utf-8", errors="replace")
        if line.startswith(":"):
            self.result.comments.append(line[1:])
            if not self._data:
                self._event_start = None
            return None
        name, colon, value = line.partition(":")
        raw_value = raw.partition(b":")[2] if colon else b""
        if value.startswith(" "):
            value = value[1:]
            raw_value = raw_value[1:]
        if name == "data":
            self._data.append(raw_value)
        elif name == "event":
            self._event_type = value
        elif name == "id":
            if "\0" in value:
                self.result.warnings.append(f"id with NUL ignored at byte {start}")
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
        start = self._event_start if self._event_start is not None else end
        self._event_start = None
        data, self._data = self._data, []
        event_type, self._event_type = self._event_type or "message", ""
        retry, self._retry = self._retry, None
        if not data:
            return None
        data_bytes = b"\n".join(data)
        return SSEEvent(
            data=data_bytes.decode("utf-8", errors="replace"), data_bytes=data_bytes, event=event_type,
            id=self._last_id, retry=retry, start=start, end=end,
        )


def parse_sse(body: bytes) -> SSEParseResult:
    """Parse a whole response body."""
    parser = SSEParser()
    parser.feed(body)
    parser.close()
    return parser.result


def split_utf8_events(events: list[SSEEvent]) -> list[int]:
    """Indices of events whose data bytes are not valid UTF-8 on their own: the mark of a
    character split across events."""
    bad = []
    for index, event in enumerate(events):
        try:
            event.data_bytes.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(index)
    return bad
