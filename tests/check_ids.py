"""The ids of the semantic and effect checks, written out rather than read from the code under test:
a check that is dropped or renamed fails the tests that import these."""

from __future__ import annotations

SEMANTIC_IDS = (
    "seed.repeat_nonstream", "seed.repeat_stream_vs_nonstream", "stop.contains_and_ends", "stop.stream",
    "max_tokens.length_finish", "n.choices_indices", "logprobs.shape", "logprobs.spell_content",
    "logprobs.spell_content_stream", "logit_bias.force", "logit_bias.ban", "logit_bias.non_integer_key",
    "logit_bias.unknown_token", "json_mode.parsable", "json_mode.schema_valid", "json_mode.invalid_schema",
    "context.truncate_default", "context.error_behavior",
)
EFFECT_IDS = tuple(f"sampling.{name}_effect" for name in (
    "temperature", "top_p", "min_p", "top_k", "frequency_penalty", "presence_penalty", "repetition_penalty"))
