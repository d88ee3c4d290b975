"""StopMatcher: stop sequences found across streamed pieces; the returned text ends WITH the stop sequence."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from reference_server.stop import StopMatcher


def run(pieces: Sequence[str], stops: Sequence[str]) -> tuple[list[str], bool, StopMatcher]:
    """Feed pieces until a stop matches; flush at the end otherwise. Returns (emitted pieces, stopped, matcher)."""
    matcher = StopMatcher(stops)
    emitted: list[str] = []
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        emitted.append(text)
        if stopped:
            return emitted, True, matcher
    emitted.append(matcher.flush())
    return emitted, False, matcher


def test_no_stops_passes_text_through() -> None:
    matcher = StopMatcher([])
    assert matcher.feed("hello") == ("hello", False)
    assert matcher.flush() == ""


def test_empty_stop_strings_are_ignored() -> None:
    matcher = StopMatcher(["", "END"])
    assert matcher.stops == ["END"]
    assert matcher.feed("abc") == ("abc", False)


def test_stop_inside_one_piece() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.feed("abcENDdef") == ("abcEND", True)
    assert matcher.matched == "END"


def test_stop_spanning_pieces() -> None:
    emitted, stopped, matcher = run(["ab", "cE", "N", "Dxyz", "more"], ["END"])
    assert stopped and matcher.matched == "END"
    assert "".join(emitted) == "abcEND"
    assert emitted[-1].endswith("END")


def test_text_that_may_begin_a_stop_is_held_back() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.feed("abcE") == ("abc", False)
    assert matcher.feed("N") == ("", False)


def test_held_back_text_is_released_when_it_turns_out_not_to_be_a_stop() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.feed("abcEN") == ("abc", False)
    assert matcher.feed("x") == ("ENx", False)


def test_held_back_text_released_partially() -> None:
    matcher = StopMatcher(["abab"])
    assert matcher.feed("xaba") == ("x", False)  # "aba" may begin "abab"
    assert matcher.feed("c") == ("abac", False)


def test_overlapping_prefix_still_matches() -> None:
    emitted, stopped, _ = run(["aba", "bab"], ["abab"])
    assert stopped and "".join(emitted) == "abab"


def test_text_after_stop_is_dropped_and_later_feeds_return_nothing() -> None:
    matcher = StopMatcher(["\n"])
    assert matcher.feed("line one\nline two") == ("line one\n", True)
    assert matcher.feed("more text") == ("", True)
    assert matcher.flush() == ""


def test_returned_text_ends_with_the_stop() -> None:
    emitted, stopped, matcher = run(["The cat sat", " on the", " mat. Then"], ["mat."])
    assert stopped
    text = "".join(emitted)
    assert text == "The cat sat on the mat."
    assert text.endswith(matcher.matched or "<none>")


def test_earliest_of_several_stops_wins() -> None:
    emitted, _, matcher = run(["one two three"], ["three", "two"])
    assert "".join(emitted) == "one two" and matcher.matched == "two"
    # Across pieces, the one completing first wins even though a longer stop started earlier.
    emitted, _, matcher = run(["xab", "cd"], ["abcd", "bc"])
    assert "".join(emitted) == "xabc" and matcher.matched == "bc"


def test_flush_releases_held_text_at_the_end() -> None:
    emitted, stopped, matcher = run(["hello E", "N"], ["END"])
    assert not stopped and matcher.matched is None
    assert emitted[-1] == "EN"
    assert "".join(emitted) == "hello EN"
    assert matcher.flush() == ""  # flushing twice releases nothing new


def test_multibyte_stop() -> None:
    emitted, stopped, _ = run(["café ", "日", "本語"], ["日本"])
    assert stopped and "".join(emitted) == "café 日本"


@st.composite
def split_text_and_stop(draw: st.DrawFn) -> tuple[str, list[str], str]:
    text = draw(st.text(alphabet="abcAB é\n", min_size=1, max_size=60))
    start = draw(st.integers(0, len(text) - 1))
    end = draw(st.integers(start + 1, min(len(text), start + 6)))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=len(text))))
    bounds = [0, *[c for c in cuts if 0 < c < len(text)], len(text)]
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    return text, pieces, text[start:end]


@settings(max_examples=300, deadline=None)
@given(split_text_and_stop())
def test_property_emitted_is_text_up_to_the_end_of_the_first_occurrence(case: tuple[str, list[str], str]) -> None:
    text, pieces, stop = case
    assert "".join(pieces) == text
    emitted, stopped, matcher = run(pieces, [stop])
    assert stopped and matcher.matched == stop
    assert "".join(emitted) == text[: text.index(stop) + len(stop)]


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet="abc", max_size=40),
    st.lists(st.integers(1, 5), max_size=20),
    st.text(alphabet="abc", min_size=1, max_size=4),
)
def test_property_no_text_is_lost_or_duplicated(text: str, sizes: list[int], stop: str) -> None:
    pieces, at = [], 0
    for size in sizes:
        pieces.append(text[at : at + size])
        at += size
    pieces.append(text[at:])
    emitted, stopped, _ = run(pieces, [stop])
    out = "".join(emitted)
    if stop in text:
        assert stopped and out == text[: text.index(stop) + len(stop)]
    else:
        assert not stopped and out == text
