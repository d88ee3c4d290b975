"""The exllamav2 engine's request -> job mapping, logits processing and logprobs: no GPU, no exllamav2."""

from __future__ import annotations

import json
import math
import pickle
import random
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from reference_server.engines.base import SamplingParams
from reference_server.engines.exllamav2_plan import (
    JobPlan,
    LogitsPlan,
    LogitsProcessor,
    SamplerSettings,
    logits_plan,
    plan_job,
    sampler_settings,
)
from reference_server.engines.logprobs import json_complete, logprobs_from_logits

VOCAB = 49152


def plan(**kwargs: object) -> JobPlan:
    params = SamplingParams(**{"max_tokens": 16, **kwargs})  # type: ignore[arg-type]
    return plan_job([1, 2, 3, 2], params, stop_token_ids=[2, 0, 2], vocab_size=VOCAB)


def test_defaults_are_neutral_and_take_the_fast_path() -> None:
    job = plan()
    assert job.sampler == SamplerSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    # exllamav2's own defaults (repetition 1.025, top_k 50, top_p 0.8, temperature 0.8) must not leak in.
    kwargs = job.sampler.as_kwargs()
    assert kwargs["token_repetition_penalty"] == 1.0 and kwargs["top_k"] == 0 and kwargs["top_p"] == 1.0
    assert kwargs["token_frequency_penalty"] == 0.0 and kwargs["token_presence_penalty"] == 0.0
    assert kwargs["dry_multiplier"] == 0.0 and kwargs["xtc_probability"] == 0.0 and kwargs["mirostat"] is False
    assert job.logits is None  # nothing for the processor: no filter on the job
    assert job.prompt_tokens == (1, 2, 3, 2) and job.max_new_tokens == 16
    assert job.stop_token_ids == (0, 2)
    assert (job.return_logits, job.top_logprobs, job.seed) == (False, 0, None)


def test_truncation_and_temperature_go_to_the_sampler() -> None:
    job = plan(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, seed=1234)
    assert job.sampler == SamplerSettings(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05)
    assert job.seed == 1234


@pytest.mark.parametrize("kwargs", [{"temperature": 0.0}, {"temperature": 0.005}, {"min_p": 1.0, "top_k": 5}])
def test_greedy_cases(kwargs: dict[str, float]) -> None:
    # exllamav2 ignores min_p >= 1 (llama.cpp keeps only the top token) and is greedy below 0.01.
    assert sampler_settings(SamplingParams(max_tokens=1, **kwargs)) == SamplerSettings(top_k=1)  # type: ignore[arg-type]


def test_penalties_bias_and_json_go_to_the_processor() -> None:
    job = plan(repetition_penalty=1.3, frequency_penalty=0.5, presence_penalty=-0.25,
               logit_bias={5: 3, 7: -100, 9: 0, VOCAB + 5: 10}, json_mode=True,
               json_schema={"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}})
    assert job.logits == LogitsPlan(
        logit_bias=((5, 3.0), (7, -math.inf)),
        repetition_penalty=1.3, frequency_penalty=0.5, presence_penalty=-0.25, json_mode=True,
        json_schema='{"properties": {"a": {"type": "integer"}}, "required": ["a"], "type": "object"}',
    )
    assert job.sampler.token_repetition_penalty == 1.0  # never applied twice
    assert logits_plan(SamplingParams(max_tokens=1, json_mode=True), VOCAB) == LogitsPlan(json_mode=True)


def test_logprobs_ask_for_raw_logits() -> None:
    job = plan(logprobs=True, top_logprobs=5)
    assert (job.return_logits, job.top_logprobs) == (True, 5)
    assert plan(logprobs=False, top_logprobs=5).top_logprobs == 0


def test_plan_is_plain_picklable_data() -> None:
    job = plan(logit_bias={5: -100}, json_mode=True, seed=3, logprobs=True, top_logprobs=2)
    assert pickle.loads(pickle.dumps(job)) == job
    hash(job)


def test_empty_prompt_is_refused() -> None:
    with pytest.raises(ValueError):
        plan_job([], SamplingParams(max_tokens=1), stop_token_ids=[], vocab_size=VOCAB)


# ---- processor ---------------------------------------------------------------------------------


def test_processor_math_in_llama_cpp_order() -> None:
    logits = np.array([2.0, -1.0, 4.0, 0.5, 3.0, -2.0], dtype=np.float32)
    original = logits.copy()
    lp = LogitsPlan(logit_bias=((0, -100.0), (3, 1.0), (5, -math.inf)), repetition_penalty=2.0,
                    frequency_penalty=0.5, presence_penalty=0.25)
    processor = LogitsProcessor(lp, prompt_tokens=[1, 3], vocab_size=6)
    processor.begin()
    processor.feed(4)
    processor.feed(4)
    out = processor.process(logits)
    assert np.array_equal(logits, original)  # never in place: the raw logits feed logprobs
    # 0: bias -100 (a plain -100 here; turning -100 into a ban is plan_job's job); 1: prompt
    # token, negative -> x2; 2: untouched; 3: bias +1 then prompt token, positive -> /2;
    # 4: output twice, positive -> /2 then - 2*0.5 - 0.25; 5: banned.
    assert out.tolist() == pytest.approx([-98.0, -2.0, 4.0, 0.75, 1.5 - 1.25, -math.inf])


def test_processor_begin_resets_output_counts() -> None:
    processor = LogitsProcessor(LogitsPlan(presence_penalty=1.0), [], vocab_size=4)
    processor.feed(1)
    processor.begin()
    assert processor.process(np.zeros(4, dtype=np.float32)).tolist() == [0.0] * 4


def test_processor_handles_padded_logits() -> None:
    # exllamav2 pads the vocabulary to a multiple of 32; ids past the tokenizer are never touched.
    processor = LogitsProcessor(LogitsPlan(logit_bias=((2, 1.0),), repetition_penalty=1.5), [1, 3], vocab_size=4)
    out = processor.process(np.ones(32, dtype=np.float32))
    assert out.shape == (32,) and out[2] == 2.0 and out[4:].tolist() == [1.0] * 28


# ---- logprobs ----------------------------------------------------------------------------------


def test_logprobs_from_logits_match_log_softmax() -> None:
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((3, 40)).astype(np.float32)
    padded = np.concatenate([rows, np.full((3, 8), -np.inf, dtype=np.float32)], axis=1)
    tokens = [5, 0, 39]
    out = logprobs_from_logits(padded, tokens, 4, vocab_size=40)
    for row, token, (lp, top) in zip(rows.astype(np.float64), tokens, out, strict=True):
        ref = row - np.log(np.exp(row - row.max()).sum()) - row.max()
        assert lp == pytest.approx(ref[token])
        assert [i for i, _ in top] == list(np.argsort(-ref)[:4])
        assert [v for _, v in top] == pytest.approx(sorted(ref, reverse=True)[:4])
    assert logprobs_from_logits(rows, tokens, 0, 40)[0][1] == ()


def test_json_complete() -> None:
    assert json_complete(b'{"a": [1, 2]}') and json_complete(b' "x" ')
    assert not json_complete(b'{"a": [1, 2]') and not json_complete(b"")


# ---- JSON mode over the real SmolLM2 vocabulary ---------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gguf = pytest.importorskip("gguf")
    pytest.importorskip("tokenizers")
    from reference_server.engines.llamacpp import default_model_path
    from reference_server.models.gguf_to_hf import read_shape, write_model_json
    from reference_server.models.tokenizer_files import read_vocab

    reader = gguf.GGUFReader(str(default_model_path()))
    vocab = read_vocab(reader)
    out = tmp_path_factory.mktemp("tokenizer")
    write_model_json(out, read_shape(reader, vocab), vocab)
    return out


def _constrained_walk(tokenizer_dir: Path, schema: dict | None, seed: int) -> str:
    pytest.importorskip("lmformatenforcer")
    from reference_server.engines.exllamav2_plan import JsonConstraint, json_tokenizer_data
    from reference_server.engines.hf_tokenizer import ModelTokenizer

    tokenizer = ModelTokenizer(tokenizer_dir)
    data = json_tokenizer_data(tokenizer.pieces, sorted(tokenizer.eos_ids))
    params = SamplingParams(max_tokens=64, json_mode=True, json_schema=schema)
    lp = logits_plan(params, tokenizer.vocab_size)
    assert lp is not None
    processor = LogitsProcessor(lp, [1, 2], tokenizer.vocab_size, lambda: JsonConstraint(data, lp.json_schema))
    processor.begin()
    rng = np.random.default_rng(seed)
    text = bytearray()
    closers = np.array([any(c in piece for c in b'"}]') for piece in tokenizer.pieces])
    for _ in range(400):
        # Random logits that favour closing strings and objects: a short walk through the grammar.
        logits = rng.standard_normal(tokenizer.vocab_size).astype(np.float32)
        logits[closers] += 2.5
        logits[sorted(tokenizer.eos_ids)] += 3.0
        token = int(np.argmax(processor.process(logits)))
        if token in tokenizer.eos_ids:
            break
        processor.feed(token)
        text += tokenizer.pieces[token]
        if json_complete(bytes(text)):
            break
    return text.decode("utf-8")


def test_json_mode_walk_yields_an_object(tokenizer_dir: Path) -> None:
    for seed in range(2):
        value = json.loads(_constrained_walk(tokenizer_dir, None, seed))
        assert isinstance(value, dict)


def test_json_mode_walk_follows_the_schema(tokenizer_dir: Path) -> None:
    schema = {"type": "object", "required": ["name", "age", "ok"], "additionalProperties": False,
              "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "ok": {"type": "boolean"}}}
    value = json.loads(_constrained_walk(tokenizer_dir, schema, random.Random(5).randrange(100)))
    jsonschema.validate(value, schema)


def test_empty_schema_is_kept_not_turned_into_object() -> None:
    lp = logits_plan(SamplingParams(max_tokens=1, json_mode=True, json_schema={}), VOCAB)
    assert lp is not None and lp.json_schema == "{}"


def test_unenforceable_schema_falls_back_to_an_object(tokenizer_dir: Path) -> None:
    value = json.loads(_constrained_walk(tokenizer_dir, {"$ref": "#/definitions/missing"}, 3))
    assert isinstance(value, dict)
