"""The typed response records: OpenAI's key order, and optional fields left out while None."""

from __future__ import annotations

from reference_server.generation import CompletedChoice
from reference_server.responses import (
    OPENING_DELTA,
    Chunk,
    ChunkChoice,
    Completion,
    CompletionChoice,
    Delta,
    Logprobs,
    ResponseHeader,
    Usage,
)
from reference_server.sse import TextEvents, encode_event

HEADER = ResponseHeader(id="chatcmpl-1", created=5, model="m")
ENTRY = {"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": []}


def test_completion_shape_and_key_order() -> None:
    choice = CompletedChoice(index=0, text="hi", finish_reason="stop", logprobs=[ENTRY], completion_tokens=3,
                             reasoning="hm", reasoning_tokens=1)
    body = Completion(HEADER, [CompletionChoice.from_completed(choice, "reasoning")], Usage(4, 3, 1)).to_json()
    assert list(body) == ["id", "created", "model", "object", "choices", "usage"]
    assert body["object"] == "chat.completion"
    assert body["choices"] == [{
        "index": 0,
        "message": {"role": "assistant", "content": "hi", "refusal": None, "reasoning": "hm"},
        "finish_reason": "stop",
        "logprobs": {"content": [ENTRY], "refusal": None},
    }]
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7,
                             "completion_tokens_details": {"reasoning_tokens": 1}}


def test_no_reasoning_key_and_null_logprobs_when_there_are_none() -> None:
    choice = CompletedChoice(index=1, text="", finish_reason="length", logprobs=None, completion_tokens=2)
    body = CompletionChoice.from_completed(choice).to_json()
    assert body["message"] == {"role": "assistant", "content": "", "refusal": None}
    assert body["logprobs"] is None
    assert "completion_tokens_details" not in Usage(1, 2).to_json()


def test_stream_chunks_byte_for_byte() -> None:
    def event(*choices: ChunkChoice, usage: Usage | None = None) -> bytes:
        return encode_event(Chunk(HEADER, list(choices), usage).to_json())

    head = b'data: {"id":"chatcmpl-1","created":5,"model":"m","object":"chat.completion.chunk","choices":['
    assert event(ChunkChoice(0, OPENING_DELTA)) == head + (
        b'{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"finish_reason":null,'
        b'"logprobs":null}]}\n\n')
    assert event(ChunkChoice(1, Delta(content="\u00e9"), logprobs=Logprobs([]))) == head + (
        '{"index":1,"delta":{"content":"\u00e9"},"finish_reason":null,"logprobs":{"content":[],"refusal":null}}]}'
        "\n\n").encode()
    assert event(ChunkChoice(0, Delta(), finish_reason="stop")) == head + (
        b'{"index":0,"delta":{},"finish_reason":"stop","logprobs":null}]}\n\n')
    assert event(usage=Usage(2, 3)) == head + (
        b'],"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}\n\n')


def test_a_delta_leaves_out_every_field_left_none() -> None:
    assert Delta().to_json() == {}
    assert Delta(content="x").to_json() == {"content": "x"}
    assert Delta(reasoning="r").to_json() == {"reasoning_content": "r"}
    assert Delta(reasoning="r", reasoning_field="reasoning").to_json() == {"reasoning": "r"}
    assert "refusal" not in Delta(content="x").to_json()  # refusal: null comes with the role only


TEXTS = ["", " word", "\u00e9t\u00e9", " \U0001f642", 'say "hi"\n\tback\\slash', "\x00text\x00", "</s>", "\ufffd",
         "\u2028 line separator", "{}[]:,"]


def test_text_events_are_the_bytes_of_the_whole_chunk() -> None:
    """The streamed token's event, filled into a template, must be what encoding its whole chunk
    gives, for any text (quotes, escapes, non-ASCII, the template's own marker) and choice index."""
    def make(index: int, text: str) -> dict[str, object]:
        return Chunk(HEADER, [ChunkChoice(index, Delta(content=text))]).to_json()

    events = TextEvents(make)
    for _ in range(2):  # the second round from templates already made
        for index in (0, 1, 3):
            for text in TEXTS:
                assert events.event(index, text) == encode_event(make(index, text))


def test_text_events_without_a_usable_template_encode_the_whole_chunk() -> None:
    """A chunk that writes the text twice (or holds the marker in a fixed field) has no single
    place for the text: every event is encoded whole, never filled in at the wrong place."""
    def twice(index: int, text: str) -> dict[str, object]:
        return {"index": index, "content": text, "echo": text}

    def marker_in_model(index: int, text: str) -> dict[str, object]:
        header = ResponseHeader(id="chatcmpl-2", created=5, model="m\x00text\x00")
        return Chunk(header, [ChunkChoice(index, Delta(content=text))]).to_json()

    for make in (twice, marker_in_model):
        events = TextEvents(make)
        for text in TEXTS:
            assert events.event(2, text) == encode_event(make(2, text))
