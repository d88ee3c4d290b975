"""logit_bias: a +100 bias forces a token, a -100 bias bans one, and a key that names no token is
refused naming the key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from conformance.checks import _shared as shared
from conformance.checks.ranges import needs_param
from conformance.context import Context, generated_text
from conformance.registry import CheckFailed, Skipped, check
from conformance.target import Exchange

# The force and ban checks judge the text alone: an endpoint that applies logit_bias but returns no logprobs
# (llama-cpp-python's server) must pass them.

# Token ids tried, in order, as the forced token: they cover punctuation in common byte-level
# vocabularies ("." and "," sit at 13/11, or 30/28 after 17 special tokens) and fit tiny ones.
FORCE_CANDIDATES = (13, 30, 11, 28, 12, 14, 40, 41, 42, 43)
# Questions whose near-greedy answer may begin with a one-character token (a digit or a mark):
# that token, found among the forced ones, is the one the ban check bans.
BAN_PROMPTS = (
    "What is 4+4? Answer with the digit only.",
    "How many legs does a cat have? Reply with one digit.",
    "What is 2+3? Reply with the digit only.",
    "Which punctuation mark ends a question? Reply with the mark only.",
    "Type a single comma.",
    "Which digit comes after 6? Reply with the digit only.",
)


@dataclass(frozen=True)
class Forced:
    """A token id and the text of that one token, learned by forcing it with a +100 bias."""

    token_id: int
    token: str


def _period(text: str, count: int) -> str | None:
    """The piece `text` is made of when it is one piece repeated `count` times, else None."""
    if count < 2 or len(text) % count:
        return None
    piece = text[: len(text) // count]
    return piece if piece * count == text else None


def _force(ctx: Context, token_id: int) -> Forced | None:
    """Force `token_id` (+100, temperature 1); None when the id is rejected or yields no text.

    Fails when the id is accepted but the text is not one piece repeated once per token.
    """
    params: dict[str, Any] = {"max_tokens": 6, "temperature": 1.0, "logit_bias": {str(token_id): 100}}
    exchange = ctx.chat(ctx.body(messages=shared.user(shared.STORY), seed=ctx.target.seed, **params))
    if 400 <= exchange.status < 500:
        ctx.expect_error(exchange, [400], param="logit_bias", what=f"logit_bias {{{token_id}: 100}} rejected")
        return None  # not in this vocabulary
    data = ctx.completion(exchange)
    # a reasoning model's reasoning is sampled with the bias too
    text = generated_text(shared.choice(data)["message"])
    used = data["usage"]["completion_tokens"]
    if not text or used < 2:
        return None  # a special or end token: nothing to compare
    piece = _period(text, used)
    ctx.expect(piece, f"logit_bias {{{token_id}: 100}} at temperature 1 must force that token at every step: "
               f"{used} tokens, but the text {text!r} is not one piece repeated", exchange)
    return Forced(token_id, piece)


def _forced(ctx: Context, token_id: int) -> Forced | None:
    return ctx.memo(f"semantics.force.{token_id}", lambda: _force(ctx, token_id))


def _first_forced(ctx: Context) -> Forced:
    def find() -> Forced:
        for token_id in FORCE_CANDIDATES:
            forced = _forced(ctx, token_id)
            if forced is not None:
                return forced
        raise CheckFailed(f"none of the token ids {list(FORCE_CANDIDATES)} could be forced with a +100 bias "
                          "(each was rejected or produced no text)", ctx.last_exchange())

    return ctx.memo("semantics.force.first", find)


def _needs_logit_bias(ctx: Context) -> None:
    """Not supported when even a valid logit_bias (0) is not answered 200 (transformers serve
    answers any logit_bias with a 500): ranges.logit_bias.*.inside fails for that, once."""
    needs_param(ctx, "logit_bias.*", 0)


@check("logit_bias.force", "logit_bias", "logit_bias")
def logit_bias_force(ctx: Context) -> None:
    """A +100 bias on one token id makes every generated token that same token (judged on the text)."""
    _needs_logit_bias(ctx)
    _first_forced(ctx)


def _token_for(ctx: Context, text: str) -> Forced | None:
    """A token whose own text is `text`: a forced candidate, or the id that a forced one-character
    candidate predicts (confirmed by forcing it).

    Byte-level vocabularies keep printable ASCII in code order from '!' (GPT-2 style, after any
    special tokens), so one forced character's id minus its code gives every other's. That
    offset is then below 0; a larger one means another layout, such as SentencePiece's byte
    fallback tokens (<0x34> at 3 + 0x34), which a model rarely emits itself: banning one would
    prove nothing, so no id is predicted there.
    """
    for token_id in FORCE_CANDIDATES:
        forced = _forced(ctx, token_id)
        if forced is None:
            continue
        if forced.token == text:
            return forced
        if _printable_char(forced.token) and _printable_char(text):
            offset = forced.token_id - ord(forced.token)
            predicted = _forced(ctx, ord(text) + offset) if -ord("!") <= offset < 0 else None
            return predicted if predicted is not None and predicted.token == text else None
    return None


def _printable_char(text: str) -> bool:
    return len(text) == 1 and "!" <= text <= "~"


def _first_token(ctx: Context, prompt: str, bias: dict[str, int] | None = None) -> tuple[Exchange, str]:
    """The text of the first token of the near-greedy, seeded answer to `prompt`."""
    params: dict[str, Any] = {"logit_bias": bias} if bias else {}
    exchange, data = ctx.ok_json(ctx.body(messages=shared.user(prompt), max_tokens=1,
                                          temperature=shared.near_greedy(ctx.target.api), seed=ctx.target.seed,
                                          **params))
    return exchange, generated_text(shared.choice(data)["message"])


@check("logit_bias.ban", "logit_bias", "logit_bias")
def logit_bias_ban(ctx: Context) -> None:
    """A -100 bias bans a token: the near-greedy answer to a question begins with a token whose id is
    known (a forced one-character token); with that id banned, the answer begins otherwise."""
    _needs_logit_bias(ctx)
    _first_forced(ctx)  # the +100 rule holds, so forced tokens tell ids from texts
    seen = []
    for prompt in BAN_PROMPTS:
        _, first = _first_token(ctx, prompt)
        seen.append(first)
        target = _token_for(ctx, first) if first else None
        if target is None:
            continue
        bias = {str(target.token_id): -100}
        exchange, banned = _first_token(ctx, prompt, bias)
        ctx.expect(banned != target.token,
                   f"the near-greedy answer to {prompt!r} begins with token id {target.token_id} "
                   f"({target.token!r}); with logit_bias {bias} it must begin otherwise, got {banned!r}", exchange)
        return
    raise Skipped("cannot judge a ban on this model: no near-greedy answer began with a token whose id the forced "
                  f"tokens tell (first tokens: {seen})")


# A key that is no token id, and an id past any vocabulary (the spec's key pattern allows 10 digits).
NON_INTEGER_KEY = "cat"
UNKNOWN_TOKEN_ID = "2000000000"


def _expect_key_named(ctx: Context, key: str, what: str) -> None:
    _needs_logit_bias(ctx)  # a server that fails every logit_bias tells nothing of its keys
    exchange = ctx.chat(ctx.body(logit_bias={key: 5}, max_tokens=4))
    ctx.expect_error(exchange, [400], param="logit_bias", what=what)
    # Any error body (our envelope, FastAPI's {"detail": ...}, plain text): the key must be in it.
    text = exchange.content.decode("utf-8", errors="replace")
    ctx.expect(key in text, f"{what}: the error must name the key {key!r}, got {text[:300]!r}", exchange)


@check("logit_bias.non_integer_key", "logit_bias", "logit_bias")
def logit_bias_non_integer_key(ctx: Context) -> None:
    """logit_bias with a key that is not a token id: refused (4xx, the spec says 400) naming the key."""
    _expect_key_named(ctx, NON_INTEGER_KEY, f"logit_bias key {NON_INTEGER_KEY!r}")


@check("logit_bias.unknown_token", "logit_bias", "logit_bias")
def logit_bias_unknown_token(ctx: Context) -> None:
    """logit_bias naming a token id past the vocabulary: refused (4xx, the spec says 400) naming the id."""
    _expect_key_named(ctx, UNKNOWN_TOKEN_ID, f"logit_bias token id {UNKNOWN_TOKEN_ID}")
