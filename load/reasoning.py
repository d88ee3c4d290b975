"""Reasoning models in the summaries: when a step's time to first content (TTFC) and reasoning
tokens are worth showing apart from TTFT, and the line the CLI prints for them.

For a model that answers at once TTFC is TTFT and there are no reasoning tokens: repeating them
would only add noise, so they are shown only where they differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def worth_showing(metrics: Mapping[str, Any]) -> bool:
    """Whether a step's requests reasoned, or its first content came at other times than its first
    tokens (reasoning or tool calls first, or streams without any content)."""
    ttfc = metrics.get("ttfc_ms")
    return bool(metrics.get("requests_with_reasoning")) or (ttfc is not None and ttfc != metrics.get("ttft_ms"))


def summary_line(metrics: Mapping[str, Any]) -> str | None:
    """'TTFC p50 .. p99 .. ms; reasoning tokens mean .. (k of n requests reasoned)', or None when
    there is nothing to add to the TTFT."""
    if not worth_showing(metrics):
        return None
    ttfc = metrics["ttfc_ms"]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    mean = metrics.get("reasoning_tokens_mean")
    return (f"TTFC (first content) p50 {ms(ttfc['p50'])} ms, p99 {ms(ttfc['p99'])} ms; reasoning tokens mean "
            f"{'-' if mean is None else f'{mean:.1f}'} ({metrics.get('requests_with_reasoning', 0)} of "
            f"{metrics['requests_ok']} requests reasoned)")
