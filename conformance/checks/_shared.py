"""What the feature checks share: the seeded story request, the answer's readers and the
near-greedy temperature (from the spec's range of temperature, not written here).

Every expectation is derived from the endpoint's own seeded outputs (never from what a given
model happens to say), and every choice a check makes (seeds, stop strings, token ids) is
deterministic, so a conforming endpoint passes every time and nothing is retried.
"""

from __future__ import annotations

from typing import Any

import spec
from conformance.context import Context
from conformance.target import Exchange

STORY = ("Write a long story about a cat, a dog and a fox who travel together. "
         "Use many different words and describe every place they visit.")
SEED_TRIES = 6  # seeds tried, in order from the target's seed, when a run is too short to use


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def seeds(ctx: Context, count: int = SEED_TRIES) -> list[int]:
    return [ctx.target.seed + i for i in range(count)]


def story(ctx: Context, seed: int, **params: Any) -> dict[str, Any]:
    """A seeded request for a 16-token story at temperature 0.7 (`params` merged in)."""
    base: dict[str, Any] = {"messages": user(STORY), "max_tokens": 16, "seed": seed, "temperature": 0.7}
    return ctx.body(**{**base, **params})


def choice(data: dict[str, Any], index: int = 0) -> dict[str, Any]:
    for item in data["choices"]:
        if item.get("index") == index:
            return item
    return data["choices"][0]


def text(data: dict[str, Any]) -> str:
    return choice(data)["message"].get("content") or ""


def baseline(ctx: Context, seed: int) -> tuple[Exchange, dict[str, Any]]:
    """The non-streamed seeded story run for `seed`, sent once per run and shared by checks."""
    return ctx.memo(f"semantics.story.{seed}", lambda: ctx.ok_json(story(ctx, seed)))


def near_greedy(api: spec.ApiSpec) -> float:
    """The temperature that picks the most likely token: the value its `x-effect` (probe greedy)
    names, just inside the low end of its documented range."""
    param = next(item for item in api.parameters if item.effect and item.effect.probe == "greedy")
    return api.parameter_ranges("documented")[param.name].near(param.effect.end, param.effect.margin)
