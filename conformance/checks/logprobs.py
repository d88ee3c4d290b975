"""Logprobs: one entry per generated token, sorted alternatives, and entries that spell the content."""

from __future__ import annotations

from typing import Any

from conformance.checks import _shared as shared
from conformance.context import Context, content_tokens
from conformance.registry import check

EPS = 1e-6


def _entries(data: dict[str, Any]) -> list[dict[str, Any]] | None:
    logprobs = shared.choice(data).get("logprobs")
    if not isinstance(logprobs, dict):
        return None
    return logprobs.get("content")



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
    exchange, data = ctx.ok_json(shared.story(ctx, ctx.target.seed, max_tokens=8, logprobs=True, top_logprobs=3))
    choice = shared.choice(data)
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
    exchange, data = ctx.ok_json(ctx.body(messages=shared.user(SPELL_PROMPT), max_tokens=16, logprobs=True,
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
    result = ctx.ok_stream(ctx.body(messages=shared.user(SPELL_PROMPT), max_tokens=16, logprobs=True,
                                    seed=ctx.target.seed))
    texts, entries, reasons = result.texts(), result.logprob_tokens(), result.finish_reasons()
    if not any(entries.values()):
        exchange, data = ctx.ok_json(ctx.body(messages=shared.user(SPELL_PROMPT), max_tokens=16, logprobs=True,
                                              seed=ctx.target.seed))
        if all((choice.get("logprobs") or {}).get("content") is None for choice in data["choices"]):
            ctx.lacks_logprobs()
        ctx.fail("logprobs: true but no chunk of the stream carried logprobs.content (the same request not "
                 "streamed returns them)", result.exchange)
    for index, text in sorted(texts.items()):
        finish = (reasons.get(index) or [None])[-1]
        problem = spelling_problem(entries.get(index, []), text, finish)
        ctx.expect(problem is None, f"stream, choice {index}: {problem}", result.exchange)
