"""Model-agnostic semantics: seed, stop, max_tokens, n, logprobs, logit_bias, JSON mode and context
handling (the sampling parameters' effects are conformance.checks.effects's).

Every expectation is derived from the endpoint's own seeded outputs (never from what a given
model happens to say), and every choice a check makes (seeds, stop strings, token ids) is
deterministic, so a conforming endpoint passes every time and nothing is retried.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import jsonschema

from conformance.checks.ranges import needs_param
from conformance.context import Context, content_tokens, generated_text
from conformance.registry import CheckFailed, Skipped, check
from conformance.target import Exchange

STORY = ("Write a long story about a cat, a dog and a fox who travel together. "
         "Use many different words and describe every place they visit.")
LONG_ANSWER = "Write a very long and detailed essay, at least 500 words, about the history of bread."
SEED_TRIES = 6  # seeds tried, in order from the target's seed, when a run is too short to use
EPS = 1e-6


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _seeds(ctx: Context, count: int = SEED_TRIES) -> list[int]:
    return [ctx.target.seed + i for i in range(count)]


def _story(ctx: Context, seed: int, **params: Any) -> dict[str, Any]:
    """A seeded request for a 16-token story at temperature 0.7 (`params` merged in)."""
    base: dict[str, Any] = {"messages": _user(STORY), "max_tokens": 16, "seed": seed, "temperature": 0.7}
    return ctx.body(**{**base, **params})


def _choice(data: dict[str, Any], index: int = 0) -> dict[str, Any]:
    for choice in data["choices"]:
        if choice.get("index") == index:
            return choice
    return data["choices"][0]


def _text(data: dict[str, Any]) -> str:
    return _choice(data)["message"].get("content") or ""


def _entries(data: dict[str, Any]) -> list[dict[str, Any]] | None:
    logprobs = _choice(data).get("logprobs")
    if not isinstance(logprobs, dict):
        return None
    return logprobs.get("content")


def _baseline(ctx: Context, seed: int) -> tuple[Exchange, dict[str, Any]]:
    """The non-streamed seeded story run for `seed`, sent once per run and shared by checks."""
    return ctx.memo(f"semantics.story.{seed}", lambda: ctx.ok_json(_story(ctx, seed)))


# ---- seed ----------------------------------------------------------------------------------


def _seed_with_text(ctx: Context) -> tuple[int, Exchange, dict[str, Any]]:
    """The first seed whose baseline run produced some text."""
    for seed in _seeds(ctx, 3):
        exchange, data = _baseline(ctx, seed)
        if _text(data):
            return seed, exchange, data
    raise CheckFailed("three seeded runs asking for a story all produced empty text", ctx.last_exchange())


@check("seed.repeat_nonstream", "seed", "determinism")
def seed_repeat_nonstream(ctx: Context) -> None:
    """The same seeded request (temperature 0.7) sent twice returns the same text."""
    seed, _, first = _seed_with_text(ctx)
    exchange, second = ctx.ok_json(_story(ctx, seed))
    ctx.expect(_text(second) == _text(first),
               f"same request with seed {seed} gave different texts: {_text(first)!r} then {_text(second)!r}",
               exchange)


@check("seed.repeat_stream_vs_nonstream", "seed", "determinism")
def seed_repeat_stream_vs_nonstream(ctx: Context) -> None:
    """A seeded request streamed returns the same text as the same request not streamed."""
    seed, _, first = _seed_with_text(ctx)
    result = ctx.ok_stream(_story(ctx, seed))
    streamed = result.texts().get(0, "")
    ctx.expect(streamed == _text(first),
               f"seed {seed}: streamed text {streamed!r} differs from the non-streamed {_text(first)!r}",
               result.exchange)


# ---- stop ----------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")
_SKIP_CHARS = 3  # a stop string starts after the first few characters


def pick_stop(text: str) -> str | None:
    """A substring occurring exactly once in `text`, starting after its first few characters.

    Prefers a whole word (the first unique one of 3+ characters, then of 2); else the first
    unique 3-, then 2-character slice. Deterministic; None when the text is too short.
    """
    words = [m for m in _WORD.finditer(text) if m.start() >= _SKIP_CHARS]
    for size in (3, 2):
        for match in words:
            word = match.group()
            if len(word) >= size and text.count(word) == 1:
                return word
    for size in (3, 2):
        for start in range(_SKIP_CHARS, len(text) - size + 1):
            piece = text[start : start + size]
            if piece.strip() and text.count(piece) == 1:
                return piece
    return None


def _stop_plan(ctx: Context) -> tuple[int, str, str]:
    """(seed, baseline text, stop string) from the first seeded run long enough to pick one."""
    for seed in _seeds(ctx):
        _, data = _baseline(ctx, seed)
        text = _text(data)
        stop = pick_stop(text)
        if stop is not None:
            return seed, text, stop
    raise CheckFailed(f"{SEED_TRIES} seeded story runs gave no text with a unique substring to stop on",
                      ctx.last_exchange())


def _needs_repeatable_seed(ctx: Context, seed: int, baseline: str, stream: bool) -> None:
    """The stop checks compare a rerun with its seeded baseline: when the baseline itself does not
    repeat (without stop), the seed is what failed (seed.* judge that), not the stop rule."""
    if stream:
        again = ctx.ok_stream(_story(ctx, seed)).texts().get(0, "")
    else:
        again = _text(ctx.ok_json(_story(ctx, seed))[1])
    if again != baseline:
        mode = "streamed" if stream else "sent again"
        judged_by = "seed.repeat_stream_vs_nonstream" if stream else "seed.repeat_nonstream"
        ctx.lacks(f"seed (seed {seed} gave {baseline!r}, then {again!r} {mode})", judged_by)


def _check_stopped(ctx: Context, exchange: Exchange, text: str, finish: str | None, baseline: str,
                   stop: str, seed: int, stream: bool) -> None:
    expected = baseline[: baseline.index(stop) + len(stop)]
    if text != expected or finish != "stop":
        _needs_repeatable_seed(ctx, seed, baseline, stream)
    where = f"seed {seed}, stop {stop!r} (baseline text {baseline!r})"
    ctx.expect(finish == "stop", f"{where}: finish_reason {finish!r}, expected 'stop'", exchange)
    ctx.expect(text.endswith(stop),
               f"{where}: the text must contain and end with the stop sequence, got {text!r}", exchange)
    ctx.expect(text == expected,
               f"{where}: the text must equal the baseline up to and including the stop sequence, "
               f"expected {expected!r}, got {text!r}", exchange)


@check("stop.contains_and_ends", "stop", "stop")
def stop_contains_and_ends(ctx: Context) -> None:
    """A seeded run rerun with a stop string from its own text ends with that string (kept, as the
    doc says) and equals the first run up to and including it; finish_reason is stop."""
    seed, baseline, stop = _stop_plan(ctx)
    exchange, data = ctx.ok_json(_story(ctx, seed, stop=stop))
    _check_stopped(ctx, exchange, _text(data), _choice(data).get("finish_reason"), baseline, stop, seed, False)


@check("stop.stream", "stop", "stop")
def stop_stream(ctx: Context) -> None:
    """The stop rule in streaming mode: the streamed text ends with the stop string, finish stop."""
    seed, baseline, stop = _stop_plan(ctx)
    result = ctx.ok_stream(_story(ctx, seed, stop=stop))
    reasons = result.finish_reasons().get(0, [])
    _check_stopped(ctx, result.exchange, result.texts().get(0, ""), reasons[-1] if reasons else None,
                   baseline, stop, seed, True)


# ---- max_tokens ----------------------------------------------------------------------------


@check("max_tokens.length_finish", "max_tokens", "limits")
def max_tokens_length_finish(ctx: Context) -> None:
    """max_tokens 2 on a prompt asking for a long answer: finish_reason length, 2 completion tokens."""
    for seed in _seeds(ctx):
        body = ctx.body(messages=_user(LONG_ANSWER), max_tokens=2, seed=seed, temperature=0.7)
        exchange, data = ctx.ok_json(body)
        finish = _choice(data).get("finish_reason")
        used = data["usage"]["completion_tokens"]
        ctx.expect(used <= 2, f"max_tokens 2 but usage.completion_tokens is {used}", exchange)
        if finish == "stop":
            continue  # this seed ended on its own within 2 tokens: try the next one
        ctx.expect(finish == "length", f"finish_reason {finish!r} after max_tokens, expected 'length'", exchange)
        ctx.expect(used == 2, f"finish_reason length at max_tokens 2 but usage.completion_tokens is {used}",
                   exchange)
        return
    ctx.fail(f"in {SEED_TRIES} seeded runs asking for a long essay with max_tokens 2, finish_reason was never "
             "'length'", ctx.last_exchange())


# ---- n -------------------------------------------------------------------------------------


@check("n.choices_indices", "n", "choices")
def n_choices_indices(ctx: Context) -> None:
    """n=3 gives 3 choices with indices exactly {0, 1, 2}, streamed and not."""
    exchange, data = ctx.ok_json(ctx.body(n=3, max_tokens=4))
    indices = [choice.get("index") for choice in data["choices"]]
    ctx.expect(sorted(indices) == [0, 1, 2], f"n=3: choice indices {indices}, expected 0, 1, 2", exchange)
    result = ctx.ok_stream(ctx.body(n=3, max_tokens=4))
    seen = sorted({choice.get("index") for chunk in result.chunks for choice in chunk.get("choices") or []})
    ctx.expect(seen == [0, 1, 2], f"n=3 streamed: choice indices {seen}, expected 0, 1, 2", result.exchange)
    finished = sorted(result.finish_reasons())
    ctx.expect(finished == [0, 1, 2], f"n=3 streamed: finish_reason seen for choices {finished}, expected 0, 1, 2",
               result.exchange)


# ---- logprobs ------------------------------------------------------------------------------


def _decoded(entry: dict[str, Any]) -> str | None:
    """The entry's bytes as text, or None when absent or not valid UTF-8 on their own."""
    raw = entry.get("bytes")
    if raw is None:
        return None
    try:
        return bytes(raw).decode("utf-8")
    except (UnicodeDecodeError, ValueError):
        return None


@check("logprobs.shape", "logprobs", "logprobs")
def logprobs_shape(ctx: Context) -> None:
    """logprobs with top_logprobs 3: one entry per generated token, logprobs <= 0, exactly 3
    alternatives sorted most likely first, bytes that decode to the token;
    and `logprobs: true` alone (no top_logprobs) returns the entries too."""
    exchange, data = ctx.ok_json(ctx.body(logprobs=True, max_tokens=4))
    ctx.expect(_entries(data) is not None, "logprobs: true without top_logprobs, but the choice has no "
               "logprobs.content", exchange)
    exchange, data = ctx.ok_json(_story(ctx, ctx.target.seed, max_tokens=8, logprobs=True, top_logprobs=3))
    choice = _choice(data)
    entries = _entries(data)
    ctx.expect(entries is not None, "logprobs: true but the choice has no logprobs.content", exchange)
    used = content_tokens(data["usage"])  # logprobs cover the answer, not the reasoning
    finish = choice.get("finish_reason")
    allowed = {used} if finish == "length" else {used, used - 1}  # an end token may go unlisted
    ctx.expect(len(entries) in allowed,
               f"{len(entries)} logprobs entries for {used} completion tokens (finish {finish})", exchange)
    for position, entry in enumerate(entries):
        at = f"logprobs.content[{position}] ({entry.get('token')!r})"
        ctx.expect(entry["logprob"] <= 0, f"{at}: logprob {entry['logprob']} > 0", exchange)
        top = entry["top_logprobs"]
        ctx.expect(len(top) == 3, f"{at}: {len(top)} top_logprobs, expected exactly 3", exchange)
        values = [alt["logprob"] for alt in top]
        ctx.expect(all(a >= b - EPS for a, b in zip(values, values[1:], strict=False)),
                   f"{at}: top_logprobs not sorted most likely first: {values}", exchange)
        ctx.expect(all(v <= 0 for v in values), f"{at}: a top logprob is > 0: {values}", exchange)
        for item in (entry, *top):
            decoded = _decoded(item)
            ctx.expect(decoded is None or decoded == item["token"],
                       f"{at}: bytes {item.get('bytes')} decode to {decoded!r}, not the token {item['token']!r}",
                       exchange)


def spelled(entries: list[dict[str, Any]]) -> str | None:
    """The text the logprob entries spell: their bytes joined and decoded (a character may span
    tokens), else their token strings; None when neither can say (bytes missing and a token
    string stands for a partial character)."""
    if all(isinstance(entry.get("bytes"), list) for entry in entries):
        return b"".join(bytes(entry["bytes"]) for entry in entries).decode("utf-8", errors="replace")
    tokens = [entry.get("token") for entry in entries]
    if any(not isinstance(token, str) or "\ufffd" in token or token.startswith("bytes:") for token in tokens):
        return None
    return "".join(tokens)


def spelling_problem(entries: list[dict[str, Any]], content: str, finish: str | None) -> str | None:
    """Why the logprob entries do not spell `content`, or None when they do. A choice that ended
    on its own may list its end token last (its text is not part of the content)."""
    whole = spelled(entries)
    if whole is None or whole == content:
        return None
    if finish != "length" and entries and spelled(entries[:-1]) == content:
        return None
    return f"the logprob tokens spell {whole!r}, but the content is {content!r}"


SPELL_PROMPT = "Write two short sentences about the sea."


@check("logprobs.spell_content", "logprobs", "logprobs")
def logprobs_spell_content(ctx: Context) -> None:
    """The logprob entries of a non-stream answer, joined, are exactly its content."""
    exchange, data = ctx.ok_json(ctx.body(messages=_user(SPELL_PROMPT), max_tokens=16, logprobs=True,
                                          seed=ctx.target.seed))
    for choice in data["choices"]:
        entries = (choice.get("logprobs") or {}).get("content")
        if entries is None:
            ctx.lacks_logprobs()
        problem = spelling_problem(entries, choice["message"].get("content") or "", choice.get("finish_reason"))
        ctx.expect(problem is None, f"choice {choice.get('index')}: {problem}", exchange)


@check("logprobs.spell_content_stream", "logprobs", "logprobs")
def logprobs_spell_content_stream(ctx: Context) -> None:
    """In a stream, each choice's logprob entries, joined over all chunks, are exactly its content."""
    result = ctx.ok_stream(ctx.body(messages=_user(SPELL_PROMPT), max_tokens=16, logprobs=True,
                                    seed=ctx.target.seed))
    texts, entries, reasons = result.texts(), result.logprob_tokens(), result.finish_reasons()
    if not any(entries.values()):
        exchange, data = ctx.ok_json(ctx.body(messages=_user(SPELL_PROMPT), max_tokens=16, logprobs=True,
                                              seed=ctx.target.seed))
        if all((choice.get("logprobs") or {}).get("content") is None for choice in data["choices"]):
            ctx.lacks_logprobs()
        ctx.fail("logprobs: true but no chunk of the stream carried logprobs.content (the same request not "
                 "streamed returns them)", result.exchange)
    for index, text in sorted(texts.items()):
        finish = (reasons.get(index) or [None])[-1]
        problem = spelling_problem(entries.get(index, []), text, finish)
        ctx.expect(problem is None, f"stream, choice {index}: {problem}", result.exchange)


# ---- logit_bias ----------------------------------------------------------------------------
# Both checks judge the text alone: an endpoint that applies logit_bias but returns no logprobs
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
NEAR_GREEDY = 0.01  # a temperature inside every profile's range that picks the most likely token


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
    exchange = ctx.chat(ctx.body(messages=_user(STORY), seed=ctx.target.seed, **params))
    if 400 <= exchange.status < 500:
        ctx.expect_error(exchange, [400], param="logit_bias", what=f"logit_bias {{{token_id}: 100}} rejected")
        return None  # not in this vocabulary
    data = ctx.completion(exchange)
    text = generated_text(_choice(data)["message"])  # a reasoning model's reasoning is sampled with the bias too
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
    exchange, data = ctx.ok_json(ctx.body(messages=_user(prompt), max_tokens=1, temperature=NEAR_GREEDY,
                                          seed=ctx.target.seed, **params))
    return exchange, generated_text(_choice(data)["message"])


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


# ---- JSON mode -----------------------------------------------------------------------------

_JSON_SYSTEM = "You are an API that answers with one JSON object and nothing else."
NAME_SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


def _json_body(ctx: Context, user: str, max_tokens: int, fmt: dict[str, Any]) -> dict[str, Any]:
    return ctx.body(messages=[{"role": "system", "content": _JSON_SYSTEM}, {"role": "user", "content": user}],
                    max_tokens=max_tokens, response_format=fmt, seed=ctx.target.seed, temperature=0.7)


def _parse_object(ctx: Context, exchange: Exchange, text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CheckFailed(f"{what}: the content is not valid JSON ({exc}): {text[:300]!r}", exchange) from exc
    ctx.expect(isinstance(value, dict), f"{what}: the content is JSON but not an object: {text[:300]!r}", exchange)
    return value


@check("json_mode.parsable", "json_mode", "json_mode")
def json_mode_parsable(ctx: Context) -> None:
    """response_format json_object: a finished answer is a JSON object."""
    body = _json_body(ctx, 'Describe a cat as a JSON object with the keys "name" (a string) and "age" '
                      "(a number).", 80, {"type": "json_object"})
    exchange, data = ctx.ok_json(body)
    text = _text(data)
    finish = _choice(data).get("finish_reason")
    if finish == "length":
        # Cut off by max_tokens, as the doc allows: only the start can be judged.
        ctx.expect(text.strip() == "" or text.lstrip().startswith("{"),
                   f"JSON mode: the (cut off) content does not start a JSON object: {text[:300]!r}", exchange)
        return
    _parse_object(ctx, exchange, text, "JSON mode")


@check("json_mode.schema_valid", "json_mode", "json_mode")
def json_mode_schema_valid(ctx: Context) -> None:
    """response_format json_object with a schema: the answer is valid against the schema."""
    fmt = {"type": "json_object", "schema": NAME_SCHEMA}
    body = _json_body(ctx, 'Give a JSON object with one key, "name", whose value is the name of a cat.', 120, fmt)
    exchange, data = ctx.ok_json(body)
    finish = _choice(data).get("finish_reason")
    ctx.expect(finish == "stop", f"JSON mode with a schema: finish_reason {finish!r} within 120 tokens, "
               "expected 'stop' (a complete object)", exchange)
    value = _parse_object(ctx, exchange, _text(data), "JSON mode with a schema")
    errors = [e.message for e in jsonschema.Draft202012Validator(NAME_SCHEMA).iter_errors(value)]
    ctx.expect(not errors, f"JSON mode: {json.dumps(value)[:300]} breaks the schema {json.dumps(NAME_SCHEMA)}: "
               + "; ".join(errors), exchange)


# Not a JSON Schema: "type" must name a JSON type.
INVALID_SCHEMA = {"type": "no-such-type"}


@check("json_mode.invalid_schema", "json_mode", "json_mode")
def json_mode_invalid_schema(ctx: Context) -> None:
    """response_format json_object with a schema that is not a valid JSON Schema: refused (4xx, the
    spec says 400) naming response_format (not a 5xx, not an answer that no schema constrains)."""
    exchange = ctx.chat(_json_body(ctx, "Give a JSON object.", 8, {"type": "json_object", "schema": INVALID_SCHEMA}))
    ctx.expect_error(exchange, [400], param="response_format",
                     what=f"response_format schema {json.dumps(INVALID_SCHEMA)}")


# ---- context -------------------------------------------------------------------------------

HUGE_MAX_TOKENS = 10_000_000
_CONTEXT_PROMPT = "Summarize the following notes in one word. " + " ".join(
    f"Note {i}: the cat sat on the mat and watched the birds outside." for i in range(12))
# Stops that end the answer at once, so a lowered max_tokens never means a long generation.
_QUICK_STOPS = [" ", "\n", ".", ","]


def _context_body(ctx: Context, **params: Any) -> dict[str, Any]:
    return ctx.body(messages=_user(_CONTEXT_PROMPT), max_tokens=HUGE_MAX_TOKENS, stop=_QUICK_STOPS, **params)


@check("context.truncate_default", "context", "context")
def context_truncate_default(ctx: Context) -> None:
    """prompt + max_tokens beyond any context: max_tokens is lowered by default (200, not an error)."""
    ctx.ok_json(_context_body(ctx))


@check("context.error_behavior", "context", "context")
def context_error_behavior(ctx: Context) -> None:
    """prompt + max_tokens beyond the context with context_length_exceeded_behavior "error": a 400."""
    exchange = ctx.chat(_context_body(ctx, context_length_exceeded_behavior="error"))
    ctx.expect_error(exchange, [400], param=("max_tokens", "messages"), what='context_length_exceeded_behavior "error"')
