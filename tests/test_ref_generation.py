"""From engine tokens to choices (UTF-8 assembly, stops, finish reasons, logprobs), and the mock engine's sampling."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from aiohttp import test_utils

from reference_server.app import build_app
from reference_server.config import ServerConfig
from reference_server.engines.base import Engine, GeneratedToken, SamplingParams
from reference_server.engines.mock import EOS_ID, VOCAB, MockEngine
from reference_server.generation import (
    ChoicePiece,
    ChoiceState,
    choice_params,
    complete_choice,
    generate_choice,
    logprob_entry,
)
from reference_server.responses import CompletionChoice, Usage

NO_EOS = {EOS_ID: -100}


class ScriptEngine(Engine):
    """Emits a fixed list of token pieces (at most max_tokens of them), then ends as if at end-of-sequence."""

    model_name = "script"
    context_length = 100
    vocab_size = 16

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.emitted = 0
        self.closed = False
        self.params_seen: list[SamplingParams] = []

    def tokenize_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        return [1, 2, 3]

    async def stream(
        self, prompt_tokens: list[int], params: SamplingParams, cancel: threading.Event,
        started: float | None = None,
    ) -> AsyncIterator[GeneratedToken]:
        self.params_seen.append(params)
        try:
            for i, piece in enumerate(self.pieces[: params.max_tokens]):
                if cancel.is_set():
                    return
                self.emitted += 1
                top = ((piece, -0.25), (b"?", -2.0))[: params.top_logprobs] if params.logprobs else ()
                yield GeneratedToken(i, piece, -0.25 if params.logprobs else None, top)
                await asyncio.sleep(0)
        finally:
            self.closed = True


def pieces_of(engine: Engine, params: SamplingParams, stops: Sequence[str] = (), index: int = 0) -> list[ChoicePiece]:
    async def collect() -> list[ChoicePiece]:
        state = ChoiceState(index)
        out = [p async for p in generate_choice(engine, [1, 2, 3], params, list(stops), state, threading.Event())]
        if isinstance(engine, ScriptEngine):
            assert state.completion_tokens == engine.emitted
        return out

    return asyncio.run(collect())


def complete(engine: Engine, params: SamplingParams, stops: Sequence[str] = (), index: int = 0) -> Any:
    return asyncio.run(complete_choice(engine, [1, 2, 3], params, list(stops), index, threading.Event()))


E_ACUTE = "é".encode()  # b"\xc3\xa9"
EMOJI = "🙂".encode()  # four bytes


# ---- UTF-8 assembly -------------------------------------------------------------------------


def test_split_multibyte_character_is_never_sent_in_halves() -> None:
    engine = ScriptEngine([b"caf", E_ACUTE[:1], E_ACUTE[1:], b" ok"])
    pieces = pieces_of(engine, SamplingParams(max_tokens=10, logprobs=True))
    for piece in pieces:
        assert "\ufffd" not in piece.text
        piece.text.encode("utf-8")  # a str with a lone half would not even be valid here
    assert [p.text for p in pieces if p.text] == ["caf", "é", " ok"]
    assert "".join(p.text for p in pieces) == "café ok"
    # The piece that carries "é" carries both tokens' logprobs, byte for byte.
    with_e = next(p for p in pieces if "é" in p.text)
    assert [entry["bytes"] for entry in with_e.logprobs] == [[0xC3], [0xA9]]
    assert sum(len(p.logprobs) for p in pieces) == 4


def test_four_byte_character_split_into_four_tokens() -> None:
    engine = ScriptEngine([bytes([b]) for b in EMOJI] + [b"!"])
    pieces = pieces_of(engine, SamplingParams(max_tokens=10))
    assert all("\ufffd" not in p.text for p in pieces)
    assert "".join(p.text for p in pieces) == "🙂!"


def test_multibyte_stop_sequence_split_across_tokens() -> None:
    engine = ScriptEngine([b"caf", E_ACUTE[:1], E_ACUTE[1:], b" more"])
    choice = complete(engine, SamplingParams(max_tokens=10), stops=["é"])
    assert choice.text == "café" and choice.finish_reason == "stop"
    assert choice.completion_tokens == 3


def test_character_cut_by_max_tokens_ends_in_one_replacement_character() -> None:
    engine = ScriptEngine([b"ab", E_ACUTE[:1]])
    choice = complete(engine, SamplingParams(max_tokens=2))
    assert choice.text == "ab\ufffd" and choice.finish_reason == "length"


# ---- finish reasons and token accounting ----------------------------------------------------


def test_finish_length_at_max_tokens() -> None:
    engine = ScriptEngine([b" a"] * 10)
    choice = complete(engine, SamplingParams(max_tokens=4, logprobs=True))
    assert choice.finish_reason == "length"
    assert choice.completion_tokens == 4 == engine.emitted
    assert choice.text == " a a a a"
    assert len(choice.logprobs) == 4


def test_finish_stop_at_end_of_sequence() -> None:
    engine = ScriptEngine([b" a", b" b"])
    choice = complete(engine, SamplingParams(max_tokens=10, logprobs=True))
    assert choice.finish_reason == "stop"
    assert choice.completion_tokens == 2 and len(choice.logprobs) == 2
    assert choice.text == " a b"


def test_finish_stop_at_a_stop_sequence_stops_the_engine() -> None:
    engine = ScriptEngine([b" hello", b" wor", b"ld and", b" more", b" text"])
    choice = complete(engine, SamplingParams(max_tokens=10, logprobs=True), stops=["world"])
    assert choice.text == " hello world"
    assert choice.finish_reason == "stop"
    assert engine.emitted == 3 and engine.closed, "generation must end at the stop sequence"
    assert choice.completion_tokens == 3 == len(choice.logprobs)


def test_held_back_text_is_released_at_the_end() -> None:
    engine = ScriptEngine([b" ab", b" wor"])
    assert complete(engine, SamplingParams(max_tokens=2), stops=["world"]).text == " ab wor"
    assert complete(ScriptEngine([b" ab", b" wor"]), SamplingParams(max_tokens=2), stops=["world"]).finish_reason == (
        "length"
    )
    eos = complete(ScriptEngine([b" ab", b" wor"]), SamplingParams(max_tokens=5), stops=["world"])
    assert eos.text == " ab wor" and eos.finish_reason == "stop"


def test_only_the_last_piece_has_a_finish_reason() -> None:
    engine = ScriptEngine([b" a", b" b", b" c"])
    pieces = pieces_of(engine, SamplingParams(max_tokens=3))
    assert [p.finish_reason for p in pieces[:-1]] == [None] * (len(pieces) - 1)
    assert pieces[-1].finish_reason == "length"


@pytest.mark.parametrize(
    "tokens,max_tokens,stops",
    [
        ([b" a"] * 6, 4, []),
        ([b" a", b" b"], 8, []),
        ([b"x", b"EN", b"Dy", b"z"], 8, ["END"]),
        ([b"caf", E_ACUTE[:1], E_ACUTE[1:]], 8, ["zz"]),
    ],
)
def test_logprob_entries_equal_completion_tokens(tokens: list[bytes], max_tokens: int, stops: list[str]) -> None:
    engine = ScriptEngine(tokens)
    choice = complete(engine, SamplingParams(max_tokens=max_tokens, logprobs=True, top_logprobs=2), stops=stops)
    assert len(choice.logprobs) == choice.completion_tokens == engine.emitted
    for entry in choice.logprobs:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert len(entry["top_logprobs"]) == 2


def test_no_logprobs_unless_asked() -> None:
    choice = complete(ScriptEngine([b" a"]), SamplingParams(max_tokens=3))
    assert choice.logprobs is None
    assert CompletionChoice.from_completed(choice).to_json()["logprobs"] is None


def test_streamed_pieces_add_up_to_the_completed_choice() -> None:
    tokens = [b"The", b" c", b"at", E_ACUTE[:1], E_ACUTE[1:], b" sat", b" on", b" mat", b"."]
    params = SamplingParams(max_tokens=20, logprobs=True)
    pieces = pieces_of(ScriptEngine(tokens), params, stops=["on m"])
    choice = complete(ScriptEngine(tokens), params, stops=["on m"])
    assert "".join(p.text for p in pieces) == choice.text == "The caté sat on m"
    assert [e for p in pieces for e in p.logprobs] == choice.logprobs


def test_logprob_entry_format() -> None:
    entry = logprob_entry(GeneratedToken(5, b"\xc3", -1.5, ((b"\xc3", -1.5), (b"a", -2.0))))
    assert entry == {
        "token": "\ufffd",
        "logprob": -1.5,
        "bytes": [0xC3],
        "top_logprobs": [
            {"token": "\ufffd", "logprob": -1.5, "bytes": [0xC3]},
            {"token": "a", "logprob": -2.0, "bytes": [97]},
        ],
    }


def test_usage_total_is_the_sum() -> None:
    assert Usage(7, 5).to_json() == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}


# ---- seeds per choice -----------------------------------------------------------------------


def test_choice_params_gives_seed_plus_index() -> None:
    params = SamplingParams(max_tokens=5, seed=42, temperature=0.5, top_k=3)
    for index in range(4):
        derived = choice_params(params, index)
        assert derived.seed == 42 + index
        assert dataclasses.replace(derived, seed=42) == params
    assert choice_params(params, 0) is params
    unseeded = SamplingParams(max_tokens=5)
    assert all(choice_params(unseeded, i).seed is None for i in range(3))


def test_engine_receives_the_choice_seed() -> None:
    engine = ScriptEngine([b" a"])
    complete(engine, SamplingParams(max_tokens=1, seed=10), index=3)
    assert engine.params_seen[-1].seed == 13


# ---- the mock engine ------------------------------------------------------------------------


def mock_tokens(engine: MockEngine, params: SamplingParams, prompt: list[int] | None = None) -> list[GeneratedToken]:
    prompt = prompt or engine.tokenize_chat([{"role": "user", "content": "Tell me about cats."}])

    async def collect() -> list[GeneratedToken]:
        return [t async for t in engine.stream(prompt, params, threading.Event())]

    return asyncio.run(collect())


@pytest.fixture(scope="module")
def mock() -> MockEngine:
    return MockEngine()


def test_mock_same_seed_same_tokens(mock: MockEngine) -> None:
    params = SamplingParams(max_tokens=40, seed=7, logit_bias=NO_EOS)
    first = [t.token_id for t in mock_tokens(mock, params)]
    assert len(first) == 40
    assert [t.token_id for t in mock_tokens(mock, params)] == first
    other = [t.token_id for t in mock_tokens(mock, dataclasses.replace(params, seed=8))]
    assert other != first


def test_mock_logit_bias_minus_100_bans(mock: MockEngine) -> None:
    base = SamplingParams(max_tokens=60, seed=3, logit_bias=NO_EOS, temperature=1.5)
    counts = Counter(t.token_id for t in mock_tokens(mock, base))
    favourite, seen = counts.most_common(1)[0]
    assert seen >= 2
    for seed in range(5):
        params = dataclasses.replace(base, seed=seed, logit_bias={**NO_EOS, favourite: -100})
        ids = [t.token_id for t in mock_tokens(mock, params)]
        assert len(ids) == 60 and favourite not in ids


def test_mock_logit_bias_plus_100_forces(mock: MockEngine) -> None:
    forced = VOCAB.index(" cat")
    for seed in range(3):
        tokens = mock_tokens(mock, SamplingParams(max_tokens=20, seed=seed, logit_bias={forced: 100}))
        assert [t.token_id for t in tokens] == [forced] * 20
        assert b"".join(t.piece for t in tokens) == b" cat" * 20


def test_mock_top_k_2_samples_within_the_top_two(mock: MockEngine) -> None:
    params = SamplingParams(max_tokens=60, seed=1, top_k=2, temperature=1.9, logprobs=True, top_logprobs=2)
    tokens = mock_tokens(mock, params)
    assert tokens
    for token in tokens:
        assert len(token.top_logprobs) == 2
        assert token.piece in [piece for piece, _ in token.top_logprobs]


def test_mock_without_top_k_leaves_the_top_two(mock: MockEngine) -> None:
    """Control for the test above: at a high temperature, unrestricted sampling does leave the top two."""
    outside = 0
    for seed in range(5):
        params = SamplingParams(
            max_tokens=60, seed=seed, temperature=1.9, logprobs=True, top_logprobs=2, logit_bias=NO_EOS
        )
        for token in mock_tokens(mock, params):
            outside += token.piece not in [piece for piece, _ in token.top_logprobs]
    assert outside > 0


def test_mock_logprobs_are_consistent(mock: MockEngine) -> None:
    tokens = mock_tokens(mock, SamplingParams(max_tokens=20, seed=2, logprobs=True, top_logprobs=5))
    for token in tokens:
        assert token.logprob is not None and token.logprob <= 0
        lps = [lp for _, lp in token.top_logprobs]
        assert lps == sorted(lps, reverse=True) and len(lps) == 5
        assert token.logprob <= lps[0]


def test_mock_honours_max_tokens_and_cancel(mock: MockEngine) -> None:
    assert len(mock_tokens(mock, SamplingParams(max_tokens=5, seed=1, logit_bias=NO_EOS))) == 5
    cancel = threading.Event()
    cancel.set()

    async def collect() -> list[GeneratedToken]:
        return [t async for t in mock.stream([1], SamplingParams(max_tokens=5), cancel)]

    assert asyncio.run(collect()) == []


# ---- several choices at once, as the server runs them -------------------------------------------


class ScriptedChoices(Engine):
    """Emits " x" until max_tokens, yielding to the event loop between tokens so choices interleave."""

    model_name = "blocking"
    context_length = 100
    vocab_size = 16

    def tokenize_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        return [1, 2]

    async def stream(self, prompt_tokens: list[int], params: SamplingParams, cancel: threading.Event,
                     started: float | None = None) -> AsyncIterator[GeneratedToken]:
        for _ in range(params.max_tokens):
            if cancel.is_set():
                return
            await asyncio.sleep(0)
            yield GeneratedToken(1, b" x")


APP_KEY_WARNING = pytest.mark.filterwarnings("ignore:It is recommended to use web.AppKey")


def post_in_process(payload: dict[str, Any]) -> tuple[int, str]:
    async def go() -> tuple[int, str]:
        app = build_app(ScriptedChoices(), ServerConfig(auth_required=False))
        async with test_utils.TestClient(test_utils.TestServer(app)) as http:
            response = await http.post("/v3/openai/chat/completions", json=payload)
            return response.status, await response.text()

    return asyncio.run(go())


@APP_KEY_WARNING
def test_every_choice_of_n_is_generated() -> None:
    """Regression: ending choice 0 used to set the request's shared cancel event, emptying choices 1..n-1."""
    payload = {"model": "blocking", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "n": 3}
    status, text = post_in_process(payload)
    assert status == 200
    body = json.loads(text)
    assert [(c["message"]["content"], c["finish_reason"]) for c in body["choices"]] == [(" x x x", "length")] * 3
    assert body["usage"]["completion_tokens"] == 9


@APP_KEY_WARNING
def test_every_streamed_choice_of_n_is_generated() -> None:
    payload = {"model": "blocking", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "n": 2}
    status, text = post_in_process({**payload, "stream": True})
    assert status == 200
    chunks = [json.loads(line[6:]) for line in text.split("\n\n") if line.startswith("data: {")]
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + (choice["delta"].get("content") or "")
    assert texts == {0: " x x x", 1: " x x x"}
    assert chunks[-1]["usage"]["completion_tokens"] == 6


@APP_KEY_WARNING
def test_single_choice_is_complete() -> None:
    """One choice over the same engine is complete (control for the n>1 tests above)."""
    payload = {"model": "blocking", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    status, text = post_in_process(payload)
    assert status == 200
    choice = json.loads(text)["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == (" x x x", "length")


class OrderRecordingChoices(ScriptedChoices):
    """ScriptedChoices that notes in `events` when each choice reaches it."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    async def stream(self, prompt_tokens: list[int], params: SamplingParams, cancel: threading.Event,
                     started: float | None = None) -> AsyncIterator[GeneratedToken]:
        self.events.append("engine")
        async for token in super().stream(prompt_tokens, params, cancel, started):
            yield token


@APP_KEY_WARNING
def test_streamed_choices_reach_the_engine_before_the_headers_go_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Time to first token: every choice's prompt starts before the response headers and the opening
    chunks are written, not after them."""
    from reference_server import handlers

    events: list[str] = []
    opened = handlers.open_event_stream

    async def open_and_note(request: Any) -> Any:
        events.append("headers")
        return await opened(request)

    monkeypatch.setattr(handlers, "open_event_stream", open_and_note)
    payload = {"model": "blocking", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "n": 2,
               "stream": True}

    async def go() -> tuple[int, str]:
        app = build_app(OrderRecordingChoices(events), ServerConfig(auth_required=False))
        async with test_utils.TestClient(test_utils.TestServer(app)) as http:
            response = await http.post("/v3/openai/chat/completions", json=payload)
            return response.status, await response.text()

    status, text = asyncio.run(go())
    assert status == 200 and text.endswith("data: [DONE]\n\n")
    assert events == ["engine", "engine", "headers"]
