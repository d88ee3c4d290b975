"""Request bodies for load runs: synthetic prompts of a target token length, or a JSONL dataset.

The endpoint's tokenizer is unknown, so the length is calibrated from what the server itself
reports: a few requests with `max_tokens: 1` give usage.prompt_tokens for two word counts, a
line through them (chat-template overhead + tokens per word) gives the word count to use, and
one more request confirms it.
"""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
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
        """A fresh random prompt (distinct text per request, so no server cache makes it cheap)."""
        text = " ".join(rng.choice(WORDS) for _ in range(self.words))
        return [{"role": "user", "content": f"Continue this list: {text}"}]


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


def body_source(
    *,
    model: str,
    stream: bool,
    output_tokens: int,
    plan: PromptPlan | None,
    dataset: list[dict[str, Any]] | None,
    extra_body: dict[str, Any],
    seed: int,
) -> Iterator[dict[str, Any]]:
    """Endless request bodies: the dataset in order (cycled), else synthetic prompts."""
    rng = random.Random(seed)
    index = 0
    while True:
        if dataset:
            entry = dataset[index % len(dataset)]
            index += 1
            messages, max_tokens = entry["messages"], entry.get("max_tokens", output_tokens)
        else:
            assert plan is not None
            messages, max_tokens = plan.messages(rng), output_tokens
        body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        body.update(extra_body)
        yield body


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
    """
    if target_tokens < 1:
        raise ValueError("prompt tokens must be >= 1")
    low_words, high_words = 1, max(8, target_tokens)
    low, high = count_tokens(low_words), count_tokens(high_words)
    per_word = max((high - low) / (high_words - low_words), 1e-6)
    words = max(1, round(low_words + (target_tokens - low) / per_word))
    measured = count_tokens(words)
    for _ in range(3):  # nudge by the residual; random words make it approximate anyway
        if measured == target_tokens:
            break
        step = round((target_tokens - measured) / per_word) or (1 if measured < target_tokens else -1)
        if words + step < 1:
            break
        words += step
        measured = count_tokens(words)
    return PromptPlan(words=words, prompt_tokens=measured)


def usage_counter(
    url: str, api_key: str | None, model: str, extra_body: dict[str, Any], seed: int = 0,
    headers: dict[str, str] | None = None,
) -> Callable[[int], int]:
    """A `count_tokens` for `calibrate_prompt` that asks the endpoint itself."""

    def count(words: int) -> int:
        body = {"model": model, "max_tokens": 1, "stream": False, **extra_body,
                "messages": PromptPlan(words).messages(random.Random(seed))}
        usage = post_json(url, api_key, body, headers=headers).get("usage") or {}
        if not isinstance(usage.get("prompt_tokens"), int):
            raise RuntimeError("the endpoint returned no usage.prompt_tokens; use --dataset, or "
                               "--prompt-words to set the prompt size without calibration")
        return usage["prompt_tokens"]

    return count
