"""Continuous batching over one llama.cpp context: many sequences, one `llama_decode` per step.

One scheduler thread owns the context. Each turn it drops sequences that ended or were
cancelled, admits waiting ones into free slots, then runs up to two decodes: a prefill step
with one chunk (up to `n_batch` tokens) of the oldest sequence still evaluating its prompt, whose
last chunk asks for the logits of the prompt's last token and samples the first token at once;
then a decode step with exactly one token of every decoding sequence (its last sampled token),
each sampled by its own sampler (`sampler.sample(ctx, row)`). Prefill and
decode alternate, so a long prompt delays the running sequences by one chunk at a time, never by
the whole prompt; the prefill goes first, so a new request's first token is not held back by
this turn's decode step (issue 24: one step less of time to first token).
What a step produced (tokens, ends) is handed to the event loops by a second thread (`Outbox`),
as the next llama_decode begins: the loops write it out while the model computes.

Why this shape (measured on llama.cpp's CPU backend, see the tests): a sequence's numbers depend
only on how many of ITS OWN tokens share a ubatch (one, or two and more), never on the other
sequences in the batch, since every sequence has its own KV stream (`kv_unified` off). So the
prompt's last token is always evaluated in a chunk of two or more of its own tokens, even when
the rest of the prompt comes from the cache (the last two are evaluated again), prompt chunks
are never one token long, and sampled tokens always go one by one: a seeded request gives the
same tokens alone or batched, cached or not.

Slots are sequence ids 0..parallel-1. A slot keeps the KV of the prompt it last evaluated after
its sequence ends (not of the answer: decoded one by one, those tokens would compute differently
in a chunk, so the next turn of a chat would depend on the cache); a new sequence takes the free
slot whose cached prompt shares the longest prefix with its own, or copies a longer prefix from
another slot (`llama_memory_seq_cp`, how the n choices of a request share one prefill), and
evaluates only the rest.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from reference_server.engines.base import GeneratedToken
from reference_server.engines.llamacpp_sampler import DrawWorkspace, Sampler, sample_rows

log = logging.getLogger(__name__)

END = object()  # the sentinel a sequence's consumer gets after its last token


@dataclass
class Sequence:
    """One generation (one choice of one request) from admission to its end."""

    prompt: list[int]
    max_tokens: int
    sampler: Sampler  # closed by the scheduler when the sequence ends
    consumer: Consumer  # gets each token, then END or an exception, through the scheduler's Outbox
    cancel: threading.Event
    # (batch row, token) -> (what to yield, whether the answer is complete, e.g. a closed JSON value)
    on_token: Callable[[int, int], tuple[GeneratedToken, bool]]
    pending: list[int] = field(default_factory=list)  # prompt tokens still to prefill (the last one too)
    next_token: int = -1  # what the next decode step feeds: the last sampled token
    produced: int = 0


@dataclass(frozen=True)
class Consumer:
    """Where one sequence's items go: `queue`, read by a coroutine running in `loop`."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any]


class Outbox:
    """Hands the scheduler's items to their consumers from a thread of its own, one batch per step
    and one wake-up per event loop.

    Why a thread: a hand-over wakes the consumer's event loop, whose thread takes the GIL at once
    and keeps it, between syscalls, while it writes the token out (CPython gives a waiting thread
    no turn until the holder sleeps or 5 ms pass). Handed over by the scheduler thread, that
    wait fell between two decode steps: 0.1-0.4 ms of the 0.55 ms between decodes at one stream
    (measured). The scheduler now only queues the step's items (`flush`, no GIL released) right
    before llama_decode; this thread takes the GIL when llama_decode releases it, and the loop
    writes while the model computes.
    """

    def __init__(self) -> None:
        self._items: list[tuple[Consumer, Any]] = []
        self._batches: queue.SimpleQueue[list[tuple[Consumer, Any]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="llamacpp-outbox", daemon=True)
        self._thread.start()

    def put(self, consumer: Consumer, item: Any) -> None:
        """Hold `item` for `consumer` until the next `flush` (scheduler thread only)."""
        self._items.append((consumer, item))

    def flush(self) -> None:
        """Hand what is held to the outbox thread."""
        if self._items:
            items, self._items = self._items, []
            self._batches.put(items)

    def close(self) -> None:
        """Deliver what was flushed, then stop the thread."""
        self.flush()
        self._batches.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while (items := self._batches.get()) is not None:
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[Any], Any]]] = {}
            for consumer, item in items:
                by_loop.setdefault(consumer.loop, []).append((consumer.queue, item))
            for loop, batch in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_deliver, batch)
                except RuntimeError:  # that loop is closed: nobody is waiting any more
                    pass


def _deliver(batch: list[tuple[asyncio.Queue[Any], Any]]) -> None:
    for waiting, item in batch:
        waiting.put_nowait(item)


@dataclass
class Slot:
    """A sequence id with its own KV stream; `tokens` are those whose KV it holds, in order.

    Only the first `prefilled` of them (evaluated in prompt chunks) are lent as a prompt cache:
    tokens decoded one at a time compute differently from the same tokens in a chunk, so reusing
    a previous answer would make the next turn of a chat depend on whether it was cached.
    """

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    prefilled: int = 0
    busy: Sequence | None = None
    admitted: int = 0  # admission order of its sequence: the oldest prefills first

    def lendable(self, prompt: list[int]) -> int:
        """How many leading tokens of `prompt` this slot's prompt cache holds."""
        return common_prefix(self.tokens[: self.prefilled], prompt)


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two lists share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class BatchScheduler:
    """Runs sequences on `parallel` slots of one llama.cpp context, in one thread."""

    def __init__(
        self,
        ctx: Any,
        *,
        parallel: int,
        n_batch: int,
        context_length: int,
        eog: frozenset[int],
        reuse_prefix: bool = True,
    ) -> None:
        self._ctx = ctx
        self._memory = llama_cpp.llama_get_memory(ctx)
        self._batch_owner = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.n_batch = n_batch
        self.context_length = context_length
        self.reuse_prefix = reuse_prefix
        self._eog = eog
        self._slots = [Slot(i) for i in range(parallel)]
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._lock = threading.Condition()
        self._closed = False
        self._admissions = 0
        self._chores: list[threading.Event] = []  # cache clears asked for, done by the scheduler thread
        self._outbox = Outbox()  # what sequences produced, handed over before the next decode (or when idle)
        self._draws = DrawWorkspace()  # where a step's full-vocabulary rows are drawn together
        self.steps = 0  # llama_decode calls so far (tests and benchmarks read it)
        self.prefill_tokens = 0  # prompt tokens evaluated (those taken from a cache are not)
        self.tokens_generated = 0  # tokens sampled, over all sequences
        self._thread = threading.Thread(target=self._run, name="llamacpp-batch", daemon=True)
        self._thread.start()

    # ---- the asyncio side --------------------------------------------------------------------

    def submit(self, sequence: Sequence) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._waiting.append(sequence)
            self._lock.notify()

    def clear_cache(self, timeout_s: float = 30.0) -> None:
        """Forget the prompt cache of every free slot (to measure cold prompts); returns once done."""
        done = threading.Event()
        with self._lock:
            self._chores.append(done)
            self._lock.notify()
        done.wait(timeout_s)

    def wake(self) -> None:
        """Something changed (a cancel): let the scheduler look again."""
        with self._lock:
            self._lock.notify()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout=30)
        self._outbox.close()
        llama_cpp.llama_batch_free(self._batch_owner)

    def running(self) -> int:
        return sum(1 for slot in self._slots if slot.busy is not None)

    def waiting(self) -> int:
        return len(self._waiting)

    # ---- the scheduler thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._closed and not self._waiting and not self.running() and not self._chores:
                    self._lock.wait()
                if self._closed:
                    break
            try:
                self._step()
            except BaseException as exc:  # never leave a consumer waiting: every running sequence gets it
                log.exception("batch step failed")
                for slot in self._slots:
                    if slot.busy is not None:
                        self._finish(slot, exc)
            if not self.running():  # no decode follows to flush it: hand over what is held now
                self._outbox.flush()
        for slot in self._slots:
            if slot.busy is not None:
                self._finish(slot, RuntimeError("the engine closed"))
        with self._lock:
            waiting, self._waiting = list(self._waiting), collections.deque()
        for sequence in waiting:
            sequence.sampler.close()
            self._outbox.put(sequence.consumer, RuntimeError("the engine closed"))
        self._outbox.flush()

    def _step(self) -> None:
        with self._lock:
            chores, self._chores = self._chores, []
        for done in chores:
            for slot in self._slots:
                if slot.busy is None:
                    llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
                    slot.tokens = []
                    slot.prefilled = 0
            done.set()
        for slot in self._slots:
            if slot.busy is not None and slot.busy.cancel.is_set():
                self._finish(slot, END)
        self._admit()
        prefilling = [slot for slot in self._slots if slot.busy is not None and slot.busy.pending]
        if prefilling:
            self._prefill_step(min(prefilling, key=lambda slot: slot.admitted))
        decoding = [slot for slot in self._slots if slot.busy is not None and not slot.busy.pending]
        if decoding:
            self._decode_step(decoding)

    def _decode(self, tokens: list[tuple[Slot, int, bool]]) -> None:
        """One llama_decode of (slot, token, wants logits) at each slot's next position."""
        batch = self._batch_owner
        for row, (slot, token, logits) in enumerate(tokens):
            batch.token[row] = token
            batch.pos[row] = len(slot.tokens)
            batch.n_seq_id[row] = 1
            batch.seq_id[row][0] = slot.seq_id
            batch.logits[row] = logits
            slot.tokens.append(token)
        batch.n_tokens = len(tokens)
        self._outbox.flush()  # the last step's tokens go out while this one computes (see Outbox)
        rc = llama_cpp.llama_decode(self._ctx, batch)
        self.steps += 1
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def _decode_step(self, slots: list[Slot]) -> None:
        """One token of every decoding sequence, then each samples its next."""
        running = [(slot, slot.busy) for slot in slots if slot.busy is not None]
        self._decode([(slot, sequence.next_token, True) for slot, sequence in running])
        drawn = sample_rows(self._ctx, [(row, sequence.sampler) for row, (_, sequence) in enumerate(running)],
                            self._draws)  # the step's rows together: see llamacpp_sampler.draw_rows
        for row, ((slot, _), token) in enumerate(zip(running, drawn, strict=True)):
            self._take(slot, row, token)

    def _prefill_step(self, slot: Slot) -> None:
        """The next chunk of one sequence's prompt (never a single token when more follow); the
        last chunk ends with the prompt's last token, whose logits give the first sampled token."""
        sequence = slot.busy
        assert sequence is not None
        chunk = sequence.pending[: self.n_batch]
        if len(sequence.pending) - len(chunk) == 1:
            chunk = chunk[:-1]  # leave two for the last chunk: a lone token computes differently
        last = len(chunk) == len(sequence.pending)
        self._decode([(slot, token, last and row == len(chunk) - 1) for row, token in enumerate(chunk)])
        self.prefill_tokens += len(chunk)
        slot.prefilled = len(slot.tokens)
        sequence.pending = sequence.pending[len(chunk):]
        if last:
            row = len(chunk) - 1
            self._take(slot, row, sample_rows(self._ctx, [(row, sequence.sampler)], self._draws)[0])

    def _admit(self) -> None:
        """Move waiting sequences into free slots, each reusing the longest cached prefix it can."""
        while True:
            with self._lock:
                if not self._waiting:
                    return
                sequence = self._waiting[0]
                if sequence.cancel.is_set():
                    self._waiting.popleft()
                    sequence.sampler.close()
                    self._outbox.put(sequence.consumer, END)
                    continue
                free = [slot for slot in self._slots if slot.busy is None]
                if not free:
                    return
                if self._donor_still_prefilling(sequence):
                    return  # wait one step: copying its prefill beats computing it twice
                self._waiting.popleft()
            self._place(sequence, free)

    def _donor_still_prefilling(self, sequence: Sequence) -> bool:
        """Whether a running sequence is evaluating a longer prefix of this prompt than any slot holds."""
        if not self.reuse_prefix:
            return False
        held = max(slot.lendable(sequence.prompt) for slot in self._slots)
        for slot in self._slots:
            other = slot.busy
            if other is not None and other.pending and common_prefix(other.prompt, sequence.prompt) > held:
                return True  # still evaluating its prompt
        return False

    def _place(self, sequence: Sequence, free: list[Slot]) -> None:
        memory = self._memory
        prompt = sequence.prompt
        keep_max = max(len(prompt) - 2, 0)  # the last two are evaluated again: the last one's logits
        if self.reuse_prefix:
            slot = max(free, key=lambda s: s.lendable(prompt))
            keep = min(slot.lendable(prompt), keep_max)
            donor = max(self._slots, key=lambda s: s.lendable(prompt))
            donor_keep = min(donor.lendable(prompt), keep_max)
            if donor is not slot and donor_keep > keep:
                llama_cpp.llama_memory_seq_cp(memory, donor.seq_id, slot.seq_id, -1, -1)  # whole stream
                slot.tokens = list(donor.tokens)
                keep = donor_keep
        else:
            slot, keep = free[0], 0
        if not llama_cpp.llama_memory_seq_rm(memory, slot.seq_id, keep, -1):
            llama_cpp.llama_memory_seq_rm(memory, slot.seq_id, -1, -1)
            keep = 0
        slot.tokens = slot.tokens[:keep]
        slot.prefilled = keep
        slot.busy = sequence
        self._admissions += 1
        slot.admitted = self._admissions
        sequence.pending = prompt[keep:]

    def _take(self, slot: Slot, index: int, token: int | Exception) -> None:
        """What the slot's sequence sampled from batch row `index` (or its sampler's error)."""
        sequence = slot.busy
        assert sequence is not None
        if sequence.cancel.is_set():
            self._finish(slot, END)
            return
        if isinstance(token, Exception):  # this request's sampler: it ends, its batch-mates go on
            log.error("sampling failed", exc_info=token)
            self._finish(slot, token)
            return
        if token in self._eog:
            self._finish(slot, END)
            return
        item, complete = sequence.on_token(index, token)
        self.tokens_generated += 1
        self._outbox.put(sequence.consumer, item)
        sequence.produced += 1
        if complete or sequence.produced >= sequence.max_tokens or len(slot.tokens) >= self.context_length:
            self._finish(slot, END)
            return
        sequence.next_token = token

    def _finish(self, slot: Slot, outcome: Any) -> None:
        """The sequence leaves its slot; the slot keeps its KV as a prompt cache."""
        sequence = slot.busy
        slot.busy = None
        if sequence is None:
            return
        sequence.sampler.close()
        self._outbox.put(sequence.consumer, outcome)

