"""Prompt text for load runs: synthetic prompts of a target token length, prefix blocks, a JSONL dataset.

The endpoint's tokenizer is unknown, so the length is calibrated from what the server itself
reports: a few requests with `max_tokens: 1` give usage.prompt_tokens for two word counts, a
line through them (chat-template overhead + tokens per word, a `TokenScale`) gives the word count
to use, and for one fixed length a few more requests nudge it onto the target.
"""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spec.endpoint import auth_headers

WORDS = (
    "river stone garden window letter morning silver orange market engine travel winter summer "
    "paper candle forest island bridge ladder mirror pocket rocket planet violin basket castle "
    "doctor farmer hammer jacket kitten lemon monkey needle ocean pepper rabbit saddle tomato "
    "umbrella valley wagon yellow zipper anchor barrel circle dragon feather guitar harbor"
).split()


class DatasetError(ValueError):
    """A dataset line that is not a chat request; the message names file and line."""


@dataclass(frozen=True)
class PromptPlan:
    """How synthetic prompts are made: this many words gives about `prompt_tokens` tokens."""

    words: int
    prompt_tokens: int | None = None  # the calibrated count, when calibration ran

    def messages(self, rng: random.Random) -> list[dict[str, str]]:
        """A fresh random prompt (distinct text per request, so no server cache makes it cheap);
        at least DISTINCT_WORDS words, however few were asked for."""
        return [{"role": "user", "content": f"Continue this list: {distinct_words(rng, self.words)}"}]


# The fewest random words of a prompt that must not repeat: 51**7 (about 2**39.7) texts, so a run
# of 100,000 requests repeats one with a chance under 1%. With fewer, short prompts repeated: at one
# word (a 32-token prompt under SmolLM2's chat template) 30 of 96 requests in a run were answered
# from llama-server's prompt cache, one token evaluated instead of the prompt (docs/benchmarks.md).
DISTINCT_WORDS = 7


def random_words(rng: random.Random, count: int) -> str:
    """`count` words drawn from WORDS (text whose token count grows linearly with `count`)."""
    return " ".join(rng.choice(WORDS) for _ in range(count))


def distinct_words(rng: random.Random, count: int) -> str:
    """`count` random words, at least DISTINCT_WORDS: text that no other request of a run repeats."""
    return random_words(rng, max(count, DISTINCT_WORDS))


def block_text(block_id: str, count: int) -> str:
    """The first `count` words of the text named `block_id`: the same id always starts with the
    same words, so prompts built from the same ids share that prefix (what prefix caches reuse)."""
    return random_words(random.Random(block_id), count)


@dataclass(frozen=True)
class TokenScale:
    """How the endpoint counts synthetic prompts: one of `w` words has `overhead + per_word * w` tokens.

    Fitted once from usage.prompt_tokens, so a workload can aim each request at its own length
    (a distribution, a prefix block) without one calibration request per length.
    """

    overhead: float
    per_word: float

    def words(self, tokens: int) -> int:
        """Words of a whole synthetic prompt of about `tokens` tokens."""
        return max(1, round((tokens - self.overhead) / self.per_word))

    def text_words(self, tokens: int) -> int:
        """Words of a piece of text of about `tokens` tokens inside a prompt (no template overhead)."""
        return max(1, round(tokens / self.per_word))


def fit_token_scale(count_tokens: Callable[[int], int], low_words: int = DISTINCT_WORDS,
                    high_words: int = 128) -> TokenScale:
    """The line through the token counts of two synthetic prompts (`count_tokens`: words -> the
    endpoint's usage.prompt_tokens of a synthetic prompt of that many words)."""
    low, high = count_tokens(low_words), count_tokens(high_words)
    per_word = max((high - low) / (high_words - low_words), 1e-6)
    return TokenScale(overhead=low - per_word * low_words, per_word=per_word)


def load_dataset(path: Path | str) -> list[dict[str, Any]]:
    """Read a JSONL file: each line a list of messages, or an object with `messages` (and
    optionally `max_tokens`). Blank lines are skipped; anything else is a DatasetError."""
    entries: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as exc:
                raise DatasetError(f"{path}:{number}: not JSON ({exc})") from None
            entry = {"messages": item} if isinstance(item, list) else item
            messages = entry.get("messages") if isinstance(entry, dict) else None
            if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in messages
            ):
                raise DatasetError(f"{path}:{number}: expected a list of messages with role and content, "
                                   "or an object with such a `messages` list")
            if "max_tokens" in entry and not (isinstance(entry["max_tokens"], int) and entry["max_tokens"] > 0):
                raise DatasetError(f"{path}:{number}: max_tokens must be a positive integer")
            entries.append({"messages": messages, **({"max_tokens": entry["max_tokens"]}
                                                     if "max_tokens" in entry else {})})
    if not entries:
        raise DatasetError(f"{path}: no requests in the file")
    return entries


def post_json(url: str, api_key: str | None, body: dict[str, Any], timeout_s: float = 60.0,
              headers: dict[str, str] | None = None) -> dict[str, Any]:
    """One non-streamed POST; raises RuntimeError with the server's error message on failure."""
    sent = {"Content-Type": "application/json", "Accept-Encoding": "identity", **auth_headers(api_key, headers)}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=sent, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode("utf-8", errors="replace")
        raise RuntimeError(f"HTTP {exc.code} from {url}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise RuntimeError(f"cannot reach {url}: {exc}") from None


def calibrate_prompt(
    target_tokens: int,
    count_tokens: Callable[[int], int],
) -> PromptPlan:
    """Find the word count whose prompt has about `target_tokens` tokens.

    `count_tokens(words)` returns usage.prompt_tokens for a synthetic prompt of that many words.
    A target below the shortest distinct prompt (DISTINCT_WORDS words) gets that one: its
    `prompt_tokens` says how long it is.
    """
    if target_tokens < 1:
        raise ValueError("prompt tokens must be >= 1")
    low_words, high_words = DISTINCT_WORDS, max(DISTINCT_WORDS + 8, target_tokens)
    low, high = count_tokens(low_words), count_tokens(high_words)
    per_word = max((high - low) / (high_words - low_words), 1e-6)
    words = max(DISTINCT_WORDS, round(low_words + (target_tokens - low) / per_word))
    measured = count_tokens(words)
    for _ in range(3):  # nudge by the residual; random words make it approximate anyway
        if measured == target_tokens:
            break
        step = round((target_tokens - measured) / per_word) or (1 if measured < target_tokens else -1)
        if max(words + step, DISTINCT_WORDS) == words:
            break
        words = max(words + step, DISTINCT_WORDS)
        measured = count_tokens(words)
    return PromptPlan(words=words, prompt_tokens=measured)


def message_counter(
    url: str, api_key: str | None, model: str, extra_body: dict[str, Any], headers: dict[str, str] | None = None
) -> Callable[[list[dict[str, Any]]], int]:
    """usage.prompt_tokens of a list of messages, as the endpoint counts them (one request, max_tokens 1)."""

    def count(messages: list[dict[str, Any]]) -> int:
        body = {"model": model, "max_tokens": 1, "stream": False, **extra_body, "messages": messages}
        usage = post_json(url, api_key, body, headers=headers).get("usage") or {}
        if not isinstance(usage.get("prompt_tokens"), int):
            raise RuntimeError("the endpoint returned no usage.prompt_tokens, so lengths in tokens cannot be "
                               "counted; use --dataset, or --prompt-words to set the prompt size in words")
        return usage["prompt_tokens"]

    return count
