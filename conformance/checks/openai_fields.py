"""OpenAI's response fields that its OpenAPI document requires and this API's documentation never
names (spec x-decisions, "refusal (response)"): judged in the openai profile only, should-level."""

from __future__ import annotations

from typing import Any

from conformance.context import Context
from conformance.registry import Skipped, check
from conformance.target import Exchange


def _refusal_logprobs(ctx: Context, choice: dict[str, Any], where: str, exchange: Exchange) -> None:
    """Where logprobs is an object, its `refusal` is present and an array or null."""
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        return  # no logprobs object: logprobs.shape judges whether there should be one
    ctx.expect("refusal" in logprobs, f"{where}: logprobs has no 'refusal' (OpenAI requires it: array or null)",
               exchange)
    ctx.expect(logprobs["refusal"] is None or isinstance(logprobs["refusal"], list),
               f"{where}: logprobs.refusal is {type(logprobs['refusal']).__name__}, not an array or null", exchange)


@check("schema.openai_refusal", "schema", "schema", severity="should")
def openai_refusal(ctx: Context) -> None:
    """openai profile: choices[].message.refusal (string or null) in a body, and logprobs.refusal
    (array or null) wherever logprobs is an object, in bodies and stream chunks, as OpenAI's
    OpenAPI document requires."""
    if ctx.target.profile != "openai":
        raise Skipped("OpenAI's response fields are checked in the openai profile (--profile openai)")
    exchange, data = ctx.ok_json(ctx.body())
    for position, choice in enumerate(data["choices"]):
        message = choice.get("message", {})
        where = f"choices[{position}].message"
        ctx.expect("refusal" in message, f"{where} has no 'refusal' (OpenAI requires it: string or null)", exchange)
        ctx.expect(message["refusal"] is None or isinstance(message["refusal"], str),
                   f"{where}.refusal is {type(message['refusal']).__name__}, not a string or null", exchange)
    if "logprobs" in ctx.target.skip_features:
        return
    exchange, data = ctx.ok_json(ctx.body(logprobs=True))
    for position, choice in enumerate(data["choices"]):
        _refusal_logprobs(ctx, choice, f"choices[{position}]", exchange)
    stream = ctx.ok_stream(ctx.body(logprobs=True))
    for number, chunk in enumerate(stream.chunks):
        for choice in chunk.get("choices") or [] if isinstance(chunk, dict) else []:
            if isinstance(choice, dict):
                _refusal_logprobs(ctx, choice, f"chunk {number}", stream.exchange)
