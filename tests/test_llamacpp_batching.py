"""Continuous batching on the llama.cpp engine: sequences decode together, share prompt prefixes,
leave the batch when they end or are cancelled, and a seeded request gives the same tokens alone,
again, cached or not, and batched with other requests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from reference_server.engines.base import SamplingParams
from reference_server.generation import choice_params

pytestmark = pytest.mark.slow

STORY = [{"role": "user", "content": "Write a short story about a cat and a dog."}]
OTHERS = [
    [{"role": "user", "content": "Name three colours."}],
    [{"role": "system", "content": "You are a helpful assistant who answers at length."},
     {"role": "user", "content": "Explain, step by step and in detail, how bread is baked at home."}],
    [{"role": "user", "content": "Hi"}],
]
PARALLEL = 4


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    from reference_server.engines.llamacpp import LlamaCppEngine

    eng = LlamaCppEngine(parallel=PARALLEL)
    yield eng
    eng.close()


async def tokens(engine: Any, messages: list[dict[str, Any]], params: SamplingParams,
                 cancel: threading.Event | None = None) -> list[int]:
    prompt = engine.tokenize_chat(messages)
    return [t.token_id async for t in engine.stream(prompt, params, cancel or threading.Event())]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def seeded(seed: int, max_tokens: int = 24, **extra: Any) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, seed=seed, temperature=0.9, **extra)


def test_these_tests_run_with_flash_attention_where_the_build_is_patched(engine: Any) -> None:
    """So that what follows proves the patched kernel choice (test_llama_build checks the build
    tox installs is the patched one)."""
    from reference_server.llama_build import FA_ROWS_PATCH, installed_patches

    assert engine.flash_attn == (FA_ROWS_PATCH in installed_patches())


def test_seeded_request_alone_is_the_same_run_after_run_cached_or_not(engine: Any) -> None:
    first = run(tokens(engine, STORY, seeded(5)))
    assert run(tokens(engine, STORY, seeded(5))) == first  # the whole prompt comes from the cache now
    engine.reuse_prefix = False
    try:
        assert run(tokens(engine, STORY, seeded(5))) == first
    finally:
        engine.reuse_prefix = True


def test_seeded_request_batched_with_others_gives_the_same_tokens(engine: Any) -> None:
    """What the README promises: batch-mates (other prompts, lengths and settings) change nothing."""
    alone = run(tokens(engine, STORY, seeded(11)))

    async def batched() -> list[list[int]]:
        others = [tokens(engine, messages, seeded(100 + i, max_tokens=40, top_k=20 + i))
                  for i, messages in enumerate(OTHERS)]
        return await asyncio.gather(tokens(engine, STORY, seeded(11)), *others)

    results = run(batched())
    assert results[0] == alone
    assert all(results[1:])


LONG = [{"role": "system", "content": "You are a careful assistant. " * 12},
        {"role": "user", "content": "Tell a long story about a lighthouse keeper, a storm and a lost ship, "
                                    "with many details about the sea, the light and the people on the shore. " * 3}]


def test_a_long_prompt_gives_the_same_tokens_cached_or_not(engine: Any) -> None:
    """A last chunk of many tokens (the whole prompt, cold) and one of two (the rest from the
    cache) must compute the prompt's last token alike, whatever kernel the chunk size picks."""
    assert len(engine.tokenize_chat(LONG)) > 150
    engine.reuse_prefix = False
    try:
        cold = run(tokens(engine, LONG, seeded(7, max_tokens=16)))
    finally:
        engine.reuse_prefix = True
    run(tokens(engine, LONG, seeded(8, max_tokens=1)))  # a slot now holds the prompt
    assert run(tokens(engine, LONG, seeded(7, max_tokens=16))) == cold


def test_the_next_turn_of_a_chat_is_the_same_cached_or_not(engine: Any) -> None:
    """The previous answer's tokens were decoded one at a time; evaluated again as part of the
    next turn's prompt they compute differently, so a slot never lends them as a prompt cache."""
    for seed in range(3):
        story = [{"role": "user", "content": f"Write a short story about cat number {seed}."}]
        answer = run(tokens(engine, story, seeded(seed, max_tokens=40)))
        text = b"".join(engine.piece(t) for t in answer).decode("utf-8", errors="replace")
        turn = [*story, {"role": "assistant", "content": text}, {"role": "user", "content": "Go on."}]
        before = engine._scheduler.prefill_tokens
        cached = run(tokens(engine, turn, seeded(50 + seed)))  # a slot holds the story and its answer
        evaluated = engine._scheduler.prefill_tokens - before
        assert len(engine.tokenize_chat(story)) - 2 <= len(engine.tokenize_chat(turn)) - evaluated  # story reused
        engine.reuse_prefix = False
        try:
            assert run(tokens(engine, turn, seeded(50 + seed))) == cached, seed
        finally:
            engine.reuse_prefix = True


def test_the_sampler_chain_is_as_deterministic_cached_or_not_and_batched(engine: Any) -> None:
    """The same promises for a request with a filter (llama.cpp's chain, not the numpy draw)."""
    params = seeded(17, max_tokens=20, top_p=0.95)
    engine.reuse_prefix = False
    try:
        cold = run(tokens(engine, LONG, params))
    finally:
        engine.reuse_prefix = True
    run(tokens(engine, LONG, seeded(18, max_tokens=1)))
    assert run(tokens(engine, LONG, params)) == cold

    async def batched() -> list[list[int]]:
        return await asyncio.gather(tokens(engine, LONG, params),
                                    *(tokens(engine, m, seeded(300 + i)) for i, m in enumerate(OTHERS)))

    assert run(batched())[0] == cold


def test_without_flash_attention_a_long_prompt_and_answer_are_the_same_every_way() -> None:
    """The promise holds with flash attention off too (a build without the patch, `--flash-attn off`)."""
    from reference_server.engines.llamacpp import LlamaCppEngine

    off = LlamaCppEngine(parallel=PARALLEL, flash_attn="off")
    try:
        assert not off.flash_attn
        test_a_long_prompt_gives_the_same_tokens_cached_or_not(off)
        test_a_long_answer_is_the_same_alone_or_batched(off)
    finally:
        off.close()


def test_a_long_answer_is_the_same_alone_or_batched(engine: Any) -> None:
    """Past 256 KV cells a sequence decoding alone and one decoding beside others must still agree."""
    ban = {t: -100 for t in engine._eog}
    params = seeded(13, max_tokens=180, logit_bias=ban)
    alone = run(tokens(engine, LONG, params))

    async def batched() -> list[list[int]]:
        others = [tokens(engine, messages, seeded(200 + i, max_tokens=180, logit_bias=ban))
                  for i, messages in enumerate(OTHERS)]
        return await asyncio.gather(tokens(engine, LONG, params), *others)

    assert run(batched())[0] == alone


def test_n_choices_share_one_prefill_and_match_their_seeds_alone(engine: Any) -> None:
    engine.reuse_prefix = False  # so the prefill below is counted, not served from a cache
    try:
        params = seeded(21, max_tokens=12)
        alone = [run(tokens(engine, STORY, choice_params(params, i))) for i in range(3)]
        engine.reuse_prefix = True
        engine._scheduler.clear_cache()
        before = engine._scheduler.prefill_tokens

        async def n3() -> list[list[int]]:
            return await asyncio.gather(*(tokens(engine, STORY, choice_params(params, i)) for i in range(3)))

        together = run(n3())
        prompt = len(engine.tokenize_chat(STORY))
        assert together == alone
        # once, not three times: the other two choices evaluate only the last two tokens again
        assert engine._scheduler.prefill_tokens - before == prompt + 2 * 2
    finally:
        engine.reuse_prefix = True


def test_concurrent_sequences_decode_in_the_same_steps(engine: Any) -> None:
    ban = {t: -100 for t in engine._eog}
    before = engine._scheduler.steps

    async def four() -> list[list[int]]:
        return await asyncio.gather(*(tokens(engine, OTHERS[i % 3], seeded(i, max_tokens=30, logit_bias=ban))
                                      for i in range(PARALLEL)))

    results = run(four())
    assert [len(r) for r in results] == [30] * PARALLEL
    # One at a time would take about 4 x 30 decode steps; together about 30 (plus a few prefill steps).
    assert engine._scheduler.steps - before < 30 + 3 * PARALLEL


def test_more_requests_than_slots_wait_their_turn_and_all_finish(engine: Any) -> None:
    ban = {t: -100 for t in engine._eog}

    async def many() -> list[list[int]]:
        return await asyncio.gather(*(tokens(engine, STORY, seeded(i, max_tokens=6, logit_bias=ban))
                                      for i in range(3 * PARALLEL)))

    assert [len(r) for r in run(many())] == [6] * (3 * PARALLEL)
    assert engine.running() == 0


def test_a_cancelled_sequence_leaves_the_batch_and_the_rest_go_on(engine: Any) -> None:
    ban = {t: -100 for t in engine._eog}

    async def scenario() -> tuple[int, list[int], int]:
        cancel = threading.Event()
        got = 0
        prompt = engine.tokenize_chat(STORY)

        async def cancelled() -> int:
            nonlocal got
            async for _ in engine.stream(prompt, seeded(1, max_tokens=200, logit_bias=ban), cancel):
                got += 1
                if got == 5:
                    cancel.set()
            return got

        n_cancelled, other = await asyncio.gather(cancelled(), tokens(engine, OTHERS[0],
                                                                     seeded(2, max_tokens=40, logit_bias=ban)))
        deadline = time.monotonic() + 5
        while engine.running() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return n_cancelled, other, engine.running()

    n_cancelled, other, still_running = run(scenario())
    assert 5 <= n_cancelled <= 6
    assert len(other) == 40
    assert still_running == 0
    assert len(run(tokens(engine, STORY, seeded(3, max_tokens=4, logit_bias=ban)))) == 4  # served normally after
