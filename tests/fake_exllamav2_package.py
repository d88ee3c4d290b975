"""CPU stand-ins for the `torch` and `exllamav2` 0.3.2 packages, so that the engine's only code that talks to
exllamav2 (`ExLlamaV2Backend` and its logits filter) runs in a test.

The generator mimics exllamav2 0.3.2's `ExLlamaV2DynamicGenerator.iterate()` (read from its
source): a "started" result, then "prefill", then "streaming" results; a token that ends in an
incomplete character (here: the first of every job) is held and comes out with the next one; a
stop token ends the job with `eos` and puts what is held (the stop token included) under "held";
max_new_tokens ends it with the held tokens at the top level; logits in results are the model's
raw output (a masking filter returns a new tensor); masking filters are used as its sampler does:
`get_next(mask=True)` must return True, then `mask_logits(flat_logits)`, then `feed(token)` after
sampling. Sampling is greedy over the (masked) logits, so tests know the answer.
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import numpy as np

# The token sampled at these steps ends in the middle of a UTF-8 character: it is held and comes
# out with the next one (or with the end of the job).
HELD_STEPS = frozenset({0})


class Tensor:
    """The few torch.Tensor operations the backend uses, over a numpy array."""

    def __init__(self, array: Any) -> None:
        self.a = np.asarray(array)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.a.shape

    def view(self, *shape: int) -> Tensor:
        return Tensor(self.a.reshape(shape))

    def tolist(self) -> Any:
        return self.a.tolist()

    def float(self) -> Tensor:
        return Tensor(self.a.astype(np.float32))

    def cpu(self) -> Tensor:
        return self

    def numpy(self) -> np.ndarray:
        return self.a

    def clone(self) -> Tensor:
        return Tensor(self.a.copy())

    def item(self) -> Any:
        return self.a.item()

    def __getitem__(self, index: Any) -> Any:
        value = self.a[index]
        return Tensor(value) if isinstance(value, np.ndarray) else value


def raw_logits(seed: int, step: int, vocab: int) -> np.ndarray:
    """The fake model's logits at a step: a fixed function of the job's seed and the step."""
    return np.random.default_rng([seed, step]).normal(0.0, 2.0, vocab).astype(np.float32)


class Filter:
    """exllamav2.generator.filters.ExLlamaV2Filter: the base the backend's filter derives from."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    def get_next(self, mask: bool = False) -> Any:
        return self.prepare_logit_mask() if mask else self.next()


class Job:
    def __init__(self, *, input_ids: Tensor, max_new_tokens: int, gen_settings: Any, seed: int | None,
                 stop_conditions: list[int], return_logits: bool, filters: list[Any] | None,
                 identifier: Any) -> None:
        self.input_ids, self.max_new_tokens, self.gen_settings = input_ids, max_new_tokens, gen_settings
        self.seed = 0 if seed is None else seed
        self.stop_tokens = set(stop_conditions)
        self.return_logits, self.filters, self.identifier = return_logits, filters or [], identifier
        self.stage = "new"
        self.new_tokens = 0
        self.held_tokens: list[int] = []
        self.held_logits: list[np.ndarray] = []


class Generator:
    def __init__(self, *, model: Any, cache: Any, tokenizer: Any, max_batch_size: int, max_seq_len: int,
                 paged: bool) -> None:
        self.vocab = model.config.vocab_size
        self.jobs: list[Job] = []
        self.cancelled: list[Any] = []
        self.cleared = False
        self.max_batch_size, self.paged = max_batch_size, paged

    def warmup(self) -> None:
        pass

    def enqueue(self, job: Job) -> None:
        self.jobs.append(job)

    def cancel(self, job: Job) -> None:
        self.cancelled.append(job.identifier)
        self.jobs.remove(job)

    def clear_queue(self) -> None:
        self.cleared = True
        self.jobs.clear()

    def iterate(self) -> list[dict[str, Any]]:
        results = []
        for job in list(self.jobs):
            base = {"job": job, "identifier": job.identifier, "eos": False, "serial": id(job)}
            if job.stage == "new":
                job.stage = "prefill"
                results.append({**base, "stage": "started"})
            elif job.stage == "prefill":
                job.stage = "streaming"
                results.append({**base, "stage": "prefill", "curr_progress": 1, "max_progress": 1})
            else:
                results.append(self._stream(job, base))
        return results

    def _stream(self, job: Job, base: dict[str, Any]) -> dict[str, Any]:
        raw = raw_logits(job.seed, job.new_tokens, self.vocab)
        logits = Tensor(raw.reshape(1, 1, self.vocab))
        if job.new_tokens == 0:
            for f in job.filters:
                f.begin("")
        if job.filters:
            assert all(f.can_mask_logits() for f in job.filters)
            for f in job.filters:
                assert f.get_next(mask=True) is True, "a masking filter must precompute its mask"
                logits = f.mask_logits(logits[0][0]).view(1, 1, -1)
        token = int(np.argmax(logits.numpy().reshape(-1)))
        for f in job.filters:
            f.feed(Tensor([[token]]))
        job.new_tokens += 1
        job.held_tokens.append(token)
        job.held_logits.append(raw)
        result = {**base, "stage": "streaming"}
        if token in job.stop_tokens:  # emit(eos, stop_token): what is held goes under "held"
            self.jobs.remove(job)
            return {**result, "eos": True, "eos_reason": "stop_token", "held": self._held(job)}
        if job.new_tokens >= job.max_new_tokens:  # emit(eos, emit_held)
            self.jobs.remove(job)
            return {**result, "eos": True, "eos_reason": "max_new_tokens", **self._held(job)}
        if job.new_tokens - 1 in HELD_STEPS:
            return result  # an incomplete character: held for the next step
        return {**result, **self._held(job)}

    @staticmethod
    def _held(job: Job) -> dict[str, Any]:
        out: dict[str, Any] = {"token_ids": Tensor([job.held_tokens])}
        if job.return_logits:
            out["logits"] = Tensor(np.stack(job.held_logits)[None, :, :])
        job.held_tokens, job.held_logits = [], []
        return out


class Model:
    def __init__(self, config: Any) -> None:
        self.config = config
        self.unloaded = False

    def load_autosplit(self, cache: Any, progress: bool = False) -> None:
        pass

    def unload(self) -> None:
        self.unloaded = True


class Config:
    def __init__(self, model_dir: str) -> None:
        self.model_dir, self.max_seq_len, self.no_flash_attn = model_dir, 0, False
        self.vocab_size = json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"]

    def arch_compat_overrides(self) -> None:
        pass


class Settings:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


def modules() -> dict[str, types.ModuleType]:
    """sys.modules entries for `torch`, `exllamav2`, `exllamav2.generator(.filters)`."""
    torch = types.ModuleType("torch")
    torch.long = "long"  # type: ignore[attr-defined]
    torch.tensor = lambda data, dtype=None: Tensor(data)  # type: ignore[attr-defined]
    torch.from_numpy = Tensor  # type: ignore[attr-defined]
    exl = types.ModuleType("exllamav2")
    exl.ExLlamaV2 = Model  # type: ignore[attr-defined]
    exl.ExLlamaV2Cache = lambda model, max_seq_len, lazy: types.SimpleNamespace(size=max_seq_len)  # type: ignore[attr-defined]
    exl.ExLlamaV2Config = Config  # type: ignore[attr-defined]
    exl.ExLlamaV2Tokenizer = lambda config: types.SimpleNamespace()  # type: ignore[attr-defined]
    generator = types.ModuleType("exllamav2.generator")
    generator.ExLlamaV2DynamicGenerator = Generator  # type: ignore[attr-defined]
    generator.ExLlamaV2DynamicJob = Job  # type: ignore[attr-defined]
    generator.ExLlamaV2Sampler = types.SimpleNamespace(Settings=Settings)  # type: ignore[attr-defined]
    filters = types.ModuleType("exllamav2.generator.filters")
    filters.ExLlamaV2Filter = Filter  # type: ignore[attr-defined]
    return {"torch": torch, "exllamav2": exl, "exllamav2.generator": generator,
            "exllamav2.generator.filters": filters}
