"""The strict SSE parser follows the WHATWG rules and records every violation."""

from __future__ import annotations

import json

import pytest

from conformance.sse import SSEParser, parse_sse, split_utf8_events


@pytest.mark.parametrize("eol,kind", [(b"\n", "LF"), (b"\r\n", "CRLF"), (b"\r", "CR")])
def test_each_line_ending(eol: bytes, kind: str) -> None:
    body = b"data: one" + eol + eol + b"data: two" + eol + eol
    result = parse_sse(body)
    assert [e.data for e in result.events] == ["one", "two"]
    assert result.line_endings == {kind}
    assert result.trailing_incomplete is None


def test_mixed_line_endings_are_recorded() -> None:
    result = parse_sse(b"data: a\r\n\r\ndata: b\n\ndata: c\r\r")
    assert [e.data for e in result.events] == ["a", "b", "c"]
    assert result.line_endings == {"CRLF", "LF", "CR"}


def test_crlf_split_across_feeds_is_one_line_end() -> None:
    parser = SSEParser()
    events = parser.feed(b"data: x\r") + parser.feed(b"\n\r") + parser.feed(b"\n") + parser.close()
    assert [e.data for e in events] == ["x"]
    assert parser.result.line_endings == {"CRLF"}


def test_comments_multiline_data_and_field_forms() -> None:
    result = parse_sse(b": keep-alive\ndata:no-space\ndata: second\nevent: custom\nid: 7\n\ndata\n\n")
    assert result.comments == [" keep-alive"]
    first, second = result.events
    assert first.data == "no-space\nsecond" and first.event == "custom" and first.id == "7"
    assert second.data == "" and second.event == "message" and second.id == "7"  # id persists


def test_retry_and_id_rules() -> None:
    result = parse_sse(b"retry: 10x\nid: a\0b\ndata: x\n\nretry: 250\ndata: y\n\n")
    assert result.events[0].retry is None and result.events[0].id is None
    assert result.events[1].retry == 250
    assert any("retry" in w for w in result.warnings) and any("NUL" in w for w in result.warnings)


def test_bom_stripped_once_and_empty_events_not_dispatched() -> None:
    result = parse_sse(b"\xef\xbb\xbfdata: a\n\n\n\nevent: nothing\n\n")
    assert [e.data for e in result.events] == ["a"]


def test_unknown_field_warns() -> None:
    result = parse_sse(b"dta: typo\ndata: x\n\n")
    assert [e.data for e in result.events] == ["x"]
    assert any("dta" in w for w in result.warnings)


def test_trailing_incomplete_event_is_recorded_not_dispatched() -> None:
    result = parse_sse(b"data: a\n\ndata: half")
    assert [e.data for e in result.events] == ["a"]
    assert result.trailing_incomplete == "half"


def test_invalid_utf8_is_recorded() -> None:
    result = parse_sse(b"data: \xff\n\n")
    assert result.invalid_utf8
    assert result.events[0].data == "\ufffd"


def test_byte_offsets_point_at_the_event() -> None:
    body = b"data: one\n\ndata: two\n\n"
    result = parse_sse(body)
    for event in result.events:
        assert body[event.start:event.end].startswith(b"data: ")
        assert body[event.start:event.end].endswith(b"\n\n")


def test_character_split_across_events_is_detected() -> None:
    def event(raw: bytes) -> bytes:
        return b'data: {"c":"' + raw + b'"}\n\n'

    split = parse_sse(event(b"caf\xc3") + event(b"\xa9!"))
    assert split_utf8_events(split.events) == [0, 1]
    whole = parse_sse(event("café".encode()) + event(b"!"))
    assert split_utf8_events(whole.events) == []
    assert json.loads(whole.events[0].data) == {"c": "café"}
