"""The strict SSE parser follows the WHATWG rules and records every violation."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spec.sse import MAX_UTF8_ERRORS, SSEParser, parse_sse, parse_sse_chunks, split_utf8_events


@pytest.mark.parametrize("eol,kind", [(b"\n", "LF"), (b"\r\n", "CRLF"), (b"\r", "CR")])
def test_each_line_ending(eol: bytes, kind: str) -> None:
    body = b"data: one" + eol + eol + b"data: two" + eol + eol
    result = parse_sse(body)
    assert [e.data for e in result.events] == ["one", "two"]
    assert result.line_endings == {kind}
    assert result.trailing_incomplete is None and result.warnings == []


def test_mixed_line_endings_are_recorded() -> None:
    result = parse_sse(b"data: a\r\n\r\ndata: b\n\ndata: c\r\rdata: d\r\ndata: e\n\r")
    assert [e.data for e in result.events] == ["a", "b", "c", "d\ne"]
    assert result.line_endings == {"CRLF", "LF", "CR"}


def test_cr_then_lf_is_one_line_end_but_lf_then_cr_is_two() -> None:
    assert [e.data for e in parse_sse(b"data: x\r\n\r\n").events] == ["x"]
    # "\n\r" ends a line and then a blank line: the event is dispatched right away
    assert [e.data for e in parse_sse(b"data: x\n\rdata: y\n\n").events] == ["x", "y"]


def test_crlf_split_across_feeds_is_one_line_end() -> None:
    parser = SSEParser()
    events = parser.feed(b"data: x\r")
    assert events == []  # the CR may be half a CRLF: nothing is decided yet
    events += parser.feed(b"\n\r")
    assert events == []  # "data: x" ended; the next CR still waits for its partner
    events += parser.feed(b"\n")
    assert [e.data for e in events] == ["x"]
    assert parser.close() == []
    assert parser.result.line_endings == {"CRLF"}
    assert (events[0].start, events[0].end) == (0, 11)


def test_cr_at_end_of_stream_is_a_line_end() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: x\r\r") == []
    assert [e.data for e in parser.close()] == ["x"]
    assert parser.result.line_endings == {"CR"} and parser.result.trailing_incomplete is None


def test_feed_after_close_is_refused() -> None:
    parser = SSEParser()
    parser.close()
    with pytest.raises(RuntimeError):
        parser.feed(b"data: x\n\n")


def test_comments_are_recorded_and_counted() -> None:
    result = parse_sse(b": keep-alive\n:\ndata: x\n: inside\n\n:ping\n\n")
    assert result.comments == [" keep-alive", "", " inside", "ping"]
    assert len(result.comments) == 4
    assert [e.data for e in result.events] == ["x"]
    assert result.warnings == []


def test_multiline_data_and_field_forms() -> None:
    result = parse_sse(b"data:no-space\ndata: second\ndata:  two-spaces\nevent: custom\nid: 7\n\ndata\n\n")
    first, second = result.events
    assert first.data == "no-space\nsecond\n two-spaces" and first.event == "custom" and first.id == "7"
    assert first.data_bytes == b"no-space\nsecond\n two-spaces"
    assert second.data == "" and second.event == "message" and second.id == "7"  # id persists


def test_field_without_colon_has_empty_value() -> None:
    result = parse_sse(b"data\ndata\n\nevent\ndata: x\n\n")
    assert [e.data for e in result.events] == ["\n", "x"]
    assert result.events[1].event == "message"  # empty event type means "message"


def test_field_names_are_case_sensitive() -> None:
    result = parse_sse(b"Data: x\ndata: y\n\n")
    assert [e.data for e in result.events] == ["y"]
    assert any("'Data'" in w for w in result.warnings)


def test_retry_non_digits_ignored() -> None:
    result = parse_sse(b"retry: 10x\ndata: a\n\nretry: -5\ndata: b\n\nretry:\ndata: c\n\nretry: 250\ndata: d\n\n")
    assert [e.retry for e in result.events] == [None, None, None, 250]
    assert sum("retry" in w for w in result.warnings) == 3


def test_retry_non_ascii_digits_ignored() -> None:
    result = parse_sse("retry: ١٢\ndata: a\n\n".encode())  # Arabic-Indic digits are not ASCII digits
    assert result.events[0].retry is None
    assert any("retry" in w for w in result.warnings)


def test_id_with_nul_ignored_and_last_id_persists() -> None:
    result = parse_sse(b"id: 1\ndata: a\n\nid: a\0b\ndata: b\n\ndata: c\n\nid\ndata: d\n\n")
    assert [e.id for e in result.events] == ["1", "1", "1", ""]
    assert any("NUL" in w for w in result.warnings)


def test_id_without_data_still_sets_last_event_id() -> None:
    result = parse_sse(b"id: 9\n\ndata: a\n\n")
    assert [(e.data, e.id) for e in result.events] == [("a", "9")]


def test_bom_stripped_once() -> None:
    result = parse_sse(b"\xef\xbb\xbfdata: a\n\n")
    assert [e.data for e in result.events] == ["a"]
    assert result.events[0].start == 3  # offsets stay in the raw body, BOM included
    twice = parse_sse(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n")
    assert twice.events == []  # the second BOM is part of the field name
    assert any("unknown field" in w for w in twice.warnings)


def test_bom_split_across_feeds() -> None:
    parser = SSEParser()
    for byte in b"\xef\xbb\xbfdata: a\n\n":
        parser.feed(bytes([byte]))
    parser.close()
    assert [e.data for e in parser.result.events] == ["a"] and parser.result.warnings == []


def test_bom_not_at_start_is_not_stripped() -> None:
    result = parse_sse(b"data: \xef\xbb\xbfa\n\n")
    assert result.events[0].data == "\ufeffa"


def test_empty_data_events_not_dispatched() -> None:
    result = parse_sse(b"\n\n\nevent: nothing\n\nretry: 5\nid: 3\n\ndata: a\n\n")
    assert [(e.data, e.event, e.retry, e.id) for e in result.events] == [("a", "message", None, "3")]
    assert result.trailing_incomplete is None


def test_trailing_incomplete_event_is_recorded_not_dispatched() -> None:
    result = parse_sse(b"data: a\n\ndata: half")
    assert [e.data for e in result.events] == ["a"]
    assert result.trailing_incomplete == "data: half"
    assert any("no line ending" in w for w in result.warnings)
    assert any("ended inside an event" in w for w in result.warnings)


def test_trailing_event_with_line_end_but_no_blank_line() -> None:
    result = parse_sse(b"data: a\n\n: note\ndata: [DONE]\n")
    assert [e.data for e in result.events] == ["a"]
    assert result.trailing_incomplete == ": note\ndata: [DONE]\n"


def test_trailing_comment_is_a_warning_not_an_incomplete_event() -> None:
    result = parse_sse(b"data: a\n\n: bye\n")
    assert result.trailing_incomplete is None
    assert [e.data for e in result.events] == ["a"]
    assert any("comment" in w for w in result.warnings)


def test_unknown_field_warns() -> None:
    result = parse_sse(b"dta: typo\ndata: x\n\n")
    assert [e.data for e in result.events] == ["x"]
    assert len(result.warnings) == 1 and "'dta'" in result.warnings[0] and "byte 0" in result.warnings[0]


def test_invalid_utf8_is_recorded_with_positions() -> None:
    result = parse_sse(b"data: \xff ok \xc3(\n\n")
    assert [e.data for e in result.events] == ["\ufffd ok \ufffd("]
    assert len(result.invalid_utf8) == 2
    assert result.invalid_utf8[0].startswith("bytes 6-7:")
    assert result.invalid_utf8[1].startswith("bytes 11-12:")


def test_invalid_utf8_in_comment_and_field_name_is_recorded() -> None:
    result = parse_sse(b":\xfe\nda\x80ta: x\ndata: y\n\n")
    assert len(result.invalid_utf8) == 2
    assert result.comments == ["\ufffd"]
    assert [e.data for e in result.events] == ["y"]


def test_invalid_utf8_itemization_is_bounded() -> None:
    result = parse_sse(b"data: " + b"\xff" * (MAX_UTF8_ERRORS + 50) + b"\n\n")
    assert len(result.invalid_utf8) == MAX_UTF8_ERRORS + 1
    assert "not itemized" in result.invalid_utf8[-1]
    assert result.events[0].data == "\ufffd" * (MAX_UTF8_ERRORS + 50)


def test_byte_offsets_and_raw_block() -> None:
    body = b"data: one\n\n: c\r\nevent: e\r\ndata: two\r\n\r\n\n\ndata: 3\r\r"
    result = parse_sse(body)
    assert [(e.start, e.end) for e in result.events] == [(0, 11), (11, 39), (41, 50)]
    for event in result.events:
        assert body[event.start:event.end] == event.raw
    assert result.events[1].raw == b": c\r\nevent: e\r\ndata: two\r\n\r\n"


def test_offsets_are_the_same_when_fed_byte_by_byte() -> None:
    body = b"\xef\xbb\xbfdata: one\r\n\r\ndata: \xc3\xa9\r\rdata: x\n\n"
    whole = parse_sse(body)
    pieces = parse_sse_chunks(body[i:i + 1] for i in range(len(body)))
    assert pieces == whole


@settings(max_examples=200, deadline=None)
@given(body=st.lists(st.sampled_from([b"data: a", b"data:b", b"data", b": c", b"event: e", b"id: 1", b"retry: 9",
                                       b"x: y", b"\r", b"\n", b"\r\n", b"\xc3", b"\xa9", b"\xef\xbb\xbf"]),
                     max_size=30).map(b"".join),
       cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_any_chunking_gives_the_same_result(body: bytes, cuts: list[int]) -> None:
    points = sorted({0, len(body), *(c for c in cuts if c <= len(body))})
    chunks = [body[a:b] for a, b in zip(points, points[1:], strict=False)]
    assert parse_sse_chunks(chunks) == parse_sse(body)
    for event in parse_sse(body).events:
        assert body[event.start:event.end] == event.raw


def test_character_split_across_events_is_detected() -> None:
    def event(raw: bytes) -> bytes:
        return b'data: {"c":"' + raw + b'"}\n\n'

    assert "é".encode() == b"\xc3\xa9"
    split = parse_sse(event(b"caf\xc3") + event(b"\xa9!"))
    assert split_utf8_events(split.events) == [0, 1]
    assert split.events[0].data_bytes == b'{"c":"caf\xc3"}'

    whole = parse_sse(event("café".encode()) + event(b"!"))
    assert split_utf8_events(whole.events) == []
    assert json.loads(whole.events[0].data) == {"c": "café"}
    assert whole.invalid_utf8 == []
