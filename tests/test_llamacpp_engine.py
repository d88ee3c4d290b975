"""The llama.cpp engine on the embedded SmolLM2-135M GGUF: every sampling parameter does what the API says."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Iterator
from typing import Any

import jsonschema
import numpy as np
import pytest

from reference_server.engines.base import GeneratedToken, SamplingParams
from reference_server.generation import complete_choice

pytestmark = pytest.mark.slow

STORY = [{"role": "user", "content": "Write a short story about a cat and a dog."}]
JSON_SYSTEM = {"role": "system", "content": "You are an API that answers with one JSON object and nothing else."}
NAME_SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    from reference_server.engines.llamacpp import LlamaCppEngine

    eng = LlamaCppEngine()
    yield eng
    eng.close()


def generate(engine: Any, messages: list[dict[str, Any]], **params: Any) -> list[GeneratedToken]:
    """All tokens of one request, through the engine's async stream (its scheduler thread)."""
    prompt = engine.tokenize_chat(messages)

    async def collect() -> list[GeneratedToken]:
        return [token async for token in engine.stream(prompt, SamplingParams(**params), threading.Event())]

    return asyncio.run(collect())


def ids(tokens: list[GeneratedToken]) -> list[int]:
    return [t.token_id for t in tokens]


def text(tokens: list[GeneratedToken]) -> str:
    return b"".join(t.piece for t in tokens).decode("utf-8", errors="replace")


def test_metadata_and_chat_template(engine: Any) -> None:
    from reference_server.engines.llamacpp import default_model_path

    assert default_model_path().is_file()
    assert engine.model_name == "SmolLM2-135M-Instruct"
    assert engine.context_length == 2048
    assert engine.vocab_size == 49152
    as_parts = [{"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]}]
    as_text = [{"role": "user", "content": "Hello there"}]
    assert engine.tokenize_chat(as_parts) == engine.tokenize_chat(as_text)
    rendered = engine.render_chat(as_text)
    assert rendered.endswith("<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n")
    (im_start,) = engine._llama.tokenize(b"<|im_start|>", add_bos=False, special=True)  # one special token
    assert engine.tokenize_chat(as_text).count(im_start) == 3  # system, user, assistant turns


def test_same_seed_same_tokens_and_seeds_differ(engine: Any) -> None:
    first = ids(generate(engine, STORY, max_tokens=12, seed=42))
    assert first == ids(generate(engine, STORY, max_tokens=12, seed=42))
    others = [ids(generate(engine, STORY, max_tokens=12, seed=s)) for s in (1, 2, 3)]
    assert not (others[0] == others[1] == others[2])


def test_max_tokens_respected_and_length_finish(engine: Any) -> None:
    eog_ban = {t: -100 for t in engine._eog}  # the model cannot end early
    tokens = generate(engine, STORY, max_tokens=5, seed=7, logit_bias=eog_ban)
    assert len(tokens) == 5
    prompt = engine.tokenize_chat(STORY)
    params = SamplingParams(max_tokens=5, seed=7, logit_bias=eog_ban)
    choice = asyncio.run(complete_choice(engine, prompt, params, [], 0, threading.Event()))
    assert choice.finish_reason == "length" and choice.completion_tokens == 5
    assert choice.text == text(tokens)


def test_end_of_generation_token_is_not_yielded(engine: Any) -> None:
    messages = [{"role": "user", "content": "Reply with the single word: yes"}]
    tokens = generate(engine, messages, max_tokens=40, seed=1, temperature=0.2)
    assert len(tokens) < 40  # the model ended the turn
    assert not set(ids(tokens)) & engine._eog


def test_the_numpy_sampler_draws_what_llama_cpps_chain_draws(engine: Any) -> None:
    """On the model's own logits (the prompt's last row), both samplers' token frequencies match
    softmax((logits + bias) / temperature): the numpy one is the chain's draw, only faster."""
    import llama_cpp

    from reference_server.engines.llamacpp_sampler import ChainSampler, FullVocabSampler

    prompt = engine.tokenize_chat(STORY)
    generate(engine, STORY, max_tokens=1, seed=1)  # the context keeps that prefill's last row
    row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(engine._ctx, -1), shape=(engine.vocab_size,))
    top = [int(t) for t in np.argsort(row)[::-1][:6]]
    params = SamplingParams(max_tokens=1, temperature=1.5, seed=2, logit_bias={top[0]: -100, top[5]: 3})
    scores = row.astype(np.float64) / 1.5
    scores[top[0]], scores[top[5]] = -math.inf, (row[top[5]] + 3) / 1.5
    want = np.exp(scores - scores.max())
    want /= want.sum()
    fast = engine._sampler(prompt, params)
    assert isinstance(fast, FullVocabSampler)
    chain = ChainSampler(engine._chain(prompt, params))
    draws = 4000
    try:
        for sampler in (fast, chain):
            seen = np.bincount([sampler.sample(engine._ctx, -1) for _ in range(draws)], minlength=engine.vocab_size)
            assert seen[top[0]] == 0, sampler
            for token in [*top[1:], -1]:  # -1: every other token together
                p = want[token] if token >= 0 else 1 - want[top[1:]].sum() - want[top[0]]
                got = seen[token] / draws if token >= 0 else 1 - seen[top[1:]].sum() / draws
                assert abs(got - p) < 5 * math.sqrt(p * (1 - p) / draws), (sampler, token, got, p)
    finally:
        fast.close()
        chain.close()


def test_logit_bias_minus_100_bans_a_token(engine: Any) -> None:
    before = ids(generate(engine, STORY, max_tokens=10, seed=5))
    banned = before[0]
    after = ids(generate(engine, STORY, max_tokens=10, seed=5, logit_bias={banned: -100}))
    assert after and banned not in after


def test_logit_bias_plus_100_forces_a_token(engine: Any) -> None:
    (forced,) = engine._llama.tokenize(b" cat", add_bos=False, special=False)
    tokens = ids(generate(engine, STORY, max_tokens=6, seed=3, logit_bias={forced: 100}))
    assert tokens == [forced] * 6


def test_logprobs_shape_and_consistency(engine: Any) -> None:
    tokens = generate(engine, STORY, max_tokens=8, seed=11, logprobs=True, top_logprobs=4)
    assert len(tokens) == 8
    seen_in_top = 0
    for token in tokens:
        assert token.logprob is not None and token.logprob <= 0.0
        assert len(token.top_logprobs) == 4
        values = [lp for _, lp in token.top_logprobs]
        assert values == sorted(values, reverse=True) and all(lp <= 0.0 for lp in values)
        for piece, lp in token.top_logprobs:
            if piece == token.piece:
                seen_in_top += 1
                assert lp == pytest.approx(token.logprob, abs=1e-6)
                break
        else:
            assert token.logprob <= values[-1] + 1e-6
    assert seen_in_top > 0
    plain = generate(engine, STORY, max_tokens=8, seed=11)
    assert ids(plain) == ids(tokens)  # logprobs do not change sampling
    assert all(t.logprob is None and t.top_logprobs == () for t in plain)


def test_top_k_2_keeps_to_the_two_most_likely(engine: Any) -> None:
    tokens = generate(engine, STORY, max_tokens=16, seed=9, temperature=1.5, top_k=2, logprobs=True, top_logprobs=5)
    assert tokens
    for token in tokens:
        assert token.logprob >= token.top_logprobs[1][1] - 1e-6


def test_json_mode_gives_a_json_object(engine: Any) -> None:
    user = {"role": "user", "content": 'Describe a cat as a JSON object with the keys "name" and "age".'}
    tokens = generate(engine, [JSON_SYSTEM, user], max_tokens=60, seed=1234, temperature=0.7, json_mode=True)
    assert len(tokens) < 60
    assert isinstance(json.loads(text(tokens)), dict)


def test_json_mode_is_an_object_even_unasked(engine: Any) -> None:
    tokens = generate(engine, STORY, max_tokens=60, seed=2, json_mode=True, temperature=0.7)
    assert text(tokens).lstrip().startswith("{")
    if len(tokens) < 60:
        assert isinstance(json.loads(text(tokens)), dict)


def test_json_mode_with_schema_validates(engine: Any) -> None:
    user = {"role": "user", "content": 'Give a JSON object with one key, "name", whose value is the name of a cat.'}
    tokens = generate(engine, [JSON_SYSTEM, user], max_tokens=60, seed=1234, temperature=0.7, json_mode=True,
                      json_schema=NAME_SCHEMA)
    assert len(tokens) < 60
    jsonschema.validate(json.loads(text(tokens)), NAME_SCHEMA)


def test_repetition_penalty_changes_output(engine: Any) -> None:
    plain = ids(generate(engine, STORY, max_tokens=16, seed=21))
    penalized = ids(generate(engine, STORY, max_tokens=16, seed=21, repetition_penalty=1.8))
    assert plain != penalized
    assert penalized == ids(generate(engine, STORY, max_tokens=16, seed=21, repetition_penalty=1.8))


def test_frequency_penalty_changes_output(engine: Any) -> None:
    plain = ids(generate(engine, STORY, max_tokens=16, seed=21))
    assert plain != ids(generate(engine, STORY, max_tokens=16, seed=21, frequency_penalty=1.9, presence_penalty=1.9))


def test_cancel_stops_within_one_token(engine: Any) -> None:
    prompt = engine.tokenize_chat(STORY)
    eog_ban = {t: -100 for t in engine._eog}
    params = SamplingParams(max_tokens=40, seed=4, logit_bias=eog_ban)

    # The event is set from the consumer after k tokens: at most the token in flight follows.
    async def consume(k: int) -> int:
        event = threading.Event()
        count = 0
        async for _ in engine.stream(prompt, params, event):
            count += 1
            if count == k:
                event.set()
        return count

    assert 4 <= asyncio.run(consume(4)) <= 5


def test_prefix_reuse_keeps_seeded_output(engine: Any) -> None:
    other = [{"role": "user", "content": "Write a short story about a cat and a bird."}]
    fresh = ids(generate(engine, STORY, max_tokens=10, seed=13))
    engine.reuse_prefix = True
    try:
        generate(engine, other, max_tokens=4, seed=1)  # leaves a shared prefix in the KV cache
        assert ids(generate(engine, STORY, max_tokens=10, seed=13)) == fresh
        assert ids(generate(engine, STORY, max_tokens=10, seed=13)) == fresh  # whole prompt cached
    finally:
        engine.reuse_prefix = False
