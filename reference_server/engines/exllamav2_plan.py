"""Request -> exllamav2 job, as plain data: the part of the exllamav2 engine that needs no GPU.

`plan_job` maps validated `SamplingParams` onto a `JobPlan` (picklable, so it can cross into a
replica process). The GPU layer (`engines.exllamav2`) only turns a plan into an
`ExLlamaV2DynamicJob`. Where exllamav2's own sampler would change the API's documented meaning,
the work moves into `LogitsProcessor`, which runs as an exllamav2 logit-masking filter:

* exllamav2 applies frequency/presence penalties over prompt + output with one range; the API
  (and the llamacpp engine) penalise repetition over prompt + output but frequency/presence over
  the output only, after logit_bias, as llama.cpp's chain does;
* exllamav2 penalises the logits in place, so the logits it returns for logprobs would carry the
  penalties; the processor works on a copy, so logprobs come from the model's own distribution;
* exllamav2 ignores min_p >= 1 (llama.cpp keeps only the most likely token(s)): mapped to top_k 1.

Truncation (top_k, top_p, min_p) and temperature stay in exllamav2's C++ sampler (fast, per job,
in its sampling threads): temperature first, then top_k, top_p, min_p (exllamav2's order; see
`SamplerSettings`). JSON mode masks tokens through lm-format-enforcer's TokenEnforcer.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from reference_server.engines.base import SamplingParams

log = logging.getLogger(__name__)

# Below this temperature exllamav2 samples greedily (its C++ sampler does the same at < 0.01).
GREEDY_BELOW = 0.01


@dataclass(frozen=True)
class SamplerSettings:
    """The ExLlamaV2Sampler.Settings fields a job sets; everything not named here is left neutral.

    Penalties and token bias are neutral here on purpose: `LogitsProcessor` applies them.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    token_repetition_penalty: float = 1.0
    token_frequency_penalty: float = 0.0
    token_presence_penalty: float = 0.0
    temperature_last: bool = False
    top_a: float = 0.0
    tfs: float = 0.0
    typical: float = 0.0
    mirostat: bool = False
    dry_multiplier: float = 0.0
    xtc_probability: float = 0.0
    smoothing_factor: float = 0.0

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `ExLlamaV2Sampler.Settings(...)`."""
        return asdict(self)


@dataclass(frozen=True)
class LogitsPlan:
    """What the per-step logits processor does, in llama.cpp's order: bias, repetition, frequency/presence, JSON."""

    logit_bias: tuple[tuple[int, float], ...] = ()
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    json_mode: bool = False
    json_schema: str | None = None  # JSON text (sorted keys), so the plan stays hashable and picklable

    @property
    def active(self) -> bool:
        """Whether anything is left for the processor to do."""
        return bool(self.logit_bias) or self.repetition_penalty != 1.0 or bool(self.frequency_penalty) \
            or bool(self.presence_penalty) or self.json_mode


@dataclass(frozen=True)
class JobPlan:
    """Everything one ExLlamaV2DynamicJob needs, as plain data."""

    prompt_tokens: tuple[int, ...]
    max_new_tokens: int
    seed: int | None
    sampler: SamplerSettings
    logits: LogitsPlan | None
    stop_token_ids: tuple[int, ...]
    return_logits: bool
    top_logprobs: int


def sampler_settings(params: SamplingParams) -> SamplerSettings:
    """The exllamav2 sampler settings for the API's temperature/top_k/top_p/min_p."""
    top_k = max(0, int(params.top_k))
    greedy = params.temperature < GREEDY_BELOW or params.min_p >= 1.0
    if greedy:
        return SamplerSettings(temperature=1.0, top_k=1, top_p=1.0, min_p=0.0)
    return SamplerSettings(
        temperature=float(params.temperature),
        top_k=top_k,
        top_p=float(params.top_p) if 0.0 < params.top_p < 1.0 else 1.0,
        min_p=float(params.min_p) if params.min_p > 0.0 else 0.0,
    )


def logits_plan(params: SamplingParams, vocab_size: int) -> LogitsPlan | None:
    """The processor's work for these parameters, or None when there is none (the fast path)."""
    bias = tuple(sorted(
        (int(token), -math.inf if value <= -100 else float(value))
        for token, value in params.logit_bias.items()
        if 0 <= int(token) < vocab_size and value != 0
    ))
    # `{}` is a schema too (any JSON value): only a missing schema means "a JSON object".
    schema = (json.dumps(params.json_schema, sort_keys=True)
              if params.json_mode and params.json_schema is not None else None)
    plan = LogitsPlan(
        logit_bias=bias,
        repetition_penalty=float(params.repetition_penalty),
        frequency_penalty=float(params.frequency_penalty),
        presence_penalty=float(params.presence_penalty),
        json_mode=params.json_mode,
        json_schema=schema,
    )
    return plan if plan.active else None


def plan_job(
    prompt_tokens: Sequence[int], params: SamplingParams, *, stop_token_ids: Sequence[int], vocab_size: int
) -> JobPlan:
    """One choice of a request as an exllamav2 job (a request with n choices is n jobs)."""
    if not prompt_tokens:
        raise ValueError("empty prompt")
    return JobPlan(
        prompt_tokens=tuple(int(t) for t in prompt_tokens),
        max_new_tokens=int(params.max_tokens),
        seed=params.seed,
        sampler=sampler_settings(params),
        logits=logits_plan(params, vocab_size),
        stop_token_ids=tuple(sorted({int(t) for t in stop_token_ids})),
        return_logits=bool(params.logprobs),
        top_logprobs=int(params.top_logprobs) if params.logprobs else 0,
    )


# ---- per-step logits processing ----------------------------------------------------------------


class JsonConstraint:
    """Tokens allowed next so that the output stays a prefix of valid JSON (lm-format-enforcer)."""

    def __init__(self, tokenizer_data: Any, schema: str | None) -> None:
        from lmformatenforcer import JsonSchemaParser, TokenEnforcer

        # JSON mode without a schema still means "a JSON object", as in the llamacpp engine; so does
        # a schema lm-format-enforcer cannot compile (e.g. a dangling $ref), as llamacpp falls back too.
        parsed = json.loads(schema) if schema is not None else {"type": "object"}
        try:
            parser = JsonSchemaParser(parsed)
        except Exception as exc:  # noqa: BLE001 - any compile failure means: constrain to an object
            log.warning("JSON schema not enforceable (%s); constraining to any JSON object", exc)
            parser = JsonSchemaParser({"type": "object"})
        self._enforcer = TokenEnforcer(tokenizer_data, parser)
        self._tokens: list[int] = []

    def begin(self) -> None:
        self._tokens = []

    def feed(self, token: int) -> None:
        self._tokens.append(token)

    def allowed(self) -> list[int]:
        allowed = self._enforcer.get_allowed_tokens(self._tokens)
        return list(getattr(allowed, "allowed_tokens", allowed))  # 0.11 wraps the list in a TokenList


def json_tokenizer_data(pieces: Sequence[bytes], eos_ids: Sequence[int]) -> Any:
    """lm-format-enforcer's per-vocabulary tables, from each token's bytes (build once per model)."""
    from lmformatenforcer import TokenEnforcerTokenizerData

    specials = set(eos_ids)
    regular = []
    for i, piece in enumerate(pieces):
        if not piece or i in specials:
            continue
        try:
            text = piece.decode("utf-8")
        except UnicodeDecodeError:
            # A piece of a multi-byte character: lm-format-enforcer sees it as U+FFFD, which a
            # JSON string accepts, so byte soup could come out. Left out, the output is always
            # valid UTF-8; any character can still be written whole or as a \u escape.
            continue
        regular.append((i, text, piece.startswith(b" ")))

    def decode(ids: list[int]) -> str:
        return b"".join(pieces[i] for i in ids if 0 <= i < len(pieces)).decode("utf-8", errors="replace")

    return TokenEnforcerTokenizerData(regular, decode, sorted(specials), False, len(pieces))


class LogitsProcessor:
    """One job's logit adjustments, applied to a copy of each step's logits (numpy, CPU)."""

    def __init__(
        self,
        plan: LogitsPlan,
        prompt_tokens: Sequence[int],
        vocab_size: int,
        json_constraint: Callable[[], JsonConstraint] | None = None,
    ) -> None:
        self.plan = plan
        self.vocab_size = vocab_size
        self._bias_ids = np.array([t for t, _ in plan.logit_bias], dtype=np.int64)
        self._bias_values = np.array([v for _, v in plan.logit_bias], dtype=np.float32)
        prompt = np.asarray(prompt_tokens, dtype=np.int64)
        self._prompt_seen = np.unique(prompt[(prompt >= 0) & (prompt < vocab_size)])
        self._counts: dict[int, int] = {}
        self._json: JsonConstraint | None = None
        if plan.json_mode:
            if json_constraint is None:
                raise ValueError("JSON mode needs a JSON constraint")
            self._json = json_constraint()

    def begin(self) -> None:
        """A new generation starts (exllamav2 calls this before the first token)."""
        self._counts.clear()
        if self._json is not None:
            self._json.begin()

    def feed(self, token: int) -> None:
        """A token was sampled."""
        self._counts[token] = self._counts.get(token, 0) + 1
        if self._json is not None:
            self._json.feed(token)

    def process(self, logits: np.ndarray) -> np.ndarray:
        """The adjusted logits (a new float32 array; the input is left untouched)."""
        out = np.array(logits, dtype=np.float32, copy=True)
        plan = self.plan
        if self._bias_ids.size:
            out[self._bias_ids] += self._bias_values
        if plan.repetition_penalty != 1.0:
            seen = self._prompt_seen
            if self._counts:
                seen = np.union1d(seen, np.fromiter(self._counts, dtype=np.int64, count=len(self._counts)))
            values = out[seen]
            with np.errstate(over="ignore"):
                out[seen] = np.where(values > 0, values / plan.repetition_penalty, values * plan.repetition_penalty)
        if (plan.frequency_penalty or plan.presence_penalty) and self._counts:
            ids = np.fromiter(self._counts, dtype=np.int64, count=len(self._counts))
            counts = np.fromiter(self._counts.values(), dtype=np.float32, count=len(self._counts))
            out[ids] -= counts * np.float32(plan.frequency_penalty) + np.float32(plan.presence_penalty)
        if self._json is not None:
            allowed = np.asarray(self._json.allowed(), dtype=np.int64)
            masked = np.full_like(out, -np.inf)
            masked[allowed] = out[allowed]
            out = masked
        return out

