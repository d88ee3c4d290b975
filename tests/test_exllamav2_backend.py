"""`ExLlamaV2Backend`, the engine's only code that talks to exllamav2, against a fake exllamav2 0.3.2
(tests/fake_exllamav2_package.py): job submission, the logits filter inside the generator's sampler,
held tokens, stop tokens, logprobs from the raw logits, cancel and close."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fake_exllamav2_package as fake
import numpy as np
import pytest

from reference_server.engines.base import SamplingParams
from reference_server.engines.exllamav2_plan import plan_job

pytest.importorskip("tokenizers")
pytest.importorskip("gguf")



@pytest.fixture
def backend(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name, module in fake.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    from reference_server.engines.exllamav2 import ExLlamaV2Backend

    made = ExLlamaV2Backend(str(model_dir), paged=True, max_seq_len=256, max_batch_size=4, cache_tokens=None)
    yield made


def plan(backend: Any, stop: tuple[int, ...] = (), **params: Any) -> Any:
    return plan_job([1, 2, 3], SamplingParams(**params), stop_token_ids=stop, vocab_size=backend.vocab_size)


def run(backend: Any, job_id: int, limit: int = 100) -> list[Any]:
    """Every event of one job until it is done."""
    events = []
    for _ in range(limit):
        events += [e for e in backend.step() if e.job_id == job_id]
        if events and events[-1].done:
            return events
    raise AssertionError(f"job {job_id} never finished: {events}")


def test_a_logit_bias_goes_through_the_filter_inside_the_sampler(backend: Any) -> None:
    backend.enqueue(1, plan(backend, max_tokens=5, seed=3, logit_bias={11: 100}))
    job = backend.generator.jobs[0]
    assert job.filters and job.max_new_tokens == 5 and job.identifier == 1
    assert job.input_ids.tolist() == [[1, 2, 3]]
    events = run(backend, 1)
    assert [t.token_id for e in events for t in e.tokens] == [11] * 5
    assert events[-1].done and backend.active_ids() == []


def test_without_a_filter_the_model_chooses(backend: Any) -> None:
    backend.enqueue(2, plan(backend, max_tokens=4, seed=5))
    assert backend.generator.jobs[0].filters is None or not backend.generator.jobs[0].filters
    tokens = [t.token_id for e in run(backend, 2) for t in e.tokens]
    vocab = backend.vocab_size
    assert tokens == [int(np.argmax(fake.raw_logits(5, step, vocab))) for step in range(4)]


def test_a_held_token_comes_out_with_the_next(backend: Any) -> None:
    # The fake holds every job's first token (an incomplete character) until the second is sampled.
    backend.enqueue(3, plan(backend, max_tokens=3, seed=1, logit_bias={11: 100}))
    events = run(backend, 3)
    assert [len(e.tokens) for e in events if e.tokens] == [2, 1]
    assert [t.token_id for e in events for t in e.tokens] == [11] * 3


def test_held_tokens_come_out_at_the_end(backend: Any) -> None:
    backend.enqueue(7, plan(backend, max_tokens=1, seed=1, logit_bias={11: 100}))
    events = run(backend, 7)
    assert len(events) == 1 and events[0].done and [t.token_id for t in events[0].tokens] == [11]


def test_a_stop_token_ends_the_job_and_is_not_returned(backend: Any) -> None:
    backend.enqueue(4, plan(backend, stop=(11,), max_tokens=10, seed=3, logit_bias={11: 100}))
    events = run(backend, 4)
    assert events[-1].done and [t.token_id for e in events for t in e.tokens] == []


def test_logprobs_come_from_the_raw_logits_not_the_masked_ones(backend: Any) -> None:
    backend.enqueue(5, plan(backend, max_tokens=2, seed=9, logit_bias={11: 100}, logprobs=True, top_logprobs=2))
    assert backend.generator.jobs[0].return_logits
    tokens = [t for e in run(backend, 5) for t in e.tokens]
    raw = fake.raw_logits(9, 0, backend.vocab_size).astype(np.float64)
    expected = raw[11] - (raw.max() + np.log(np.exp(raw - raw.max()).sum()))
    assert tokens[0].token_id == 11 and tokens[0].logprob == pytest.approx(expected, abs=1e-4)
    assert len(tokens[0].top_logprobs) == 2 and tokens[0].top_logprobs[0][0] == int(np.argmax(raw))


def test_cancel_and_close(backend: Any) -> None:
    backend.enqueue(6, plan(backend, max_tokens=50, seed=2))
    backend.step()
    backend.cancel(6)
    assert backend.generator.cancelled == [6] and backend.active_ids() == []
    backend.close()
    assert backend.generator.cleared and backend.model.unloaded
