"""Reasoning models in the summaries: when a step's time to first content (TTFC) and reasoning
tokens are worth showing apart from TTFT, and the line the CLI prints for them.

For a model that answers at once TTFC is TTFT and there are no reasoning tokens: repeating them
would only add noise, so they are shown only where they differ.
"""

from __future__ import annotations

from load.document import StepMetrics


def worth_showing(metrics: StepMetrics) -> bool:
    """Whether a step's requests reasoned, or its first content came at other times than its first
    tokens (reasoning or tool calls first, or streams without any content)."""
    ttfc = metrics.ttfc_ms
    return bool(metrics.requests_with_reasoning) or (ttfc is not None and ttfc != metrics.ttft_ms)


def summary_line(metrics: StepMetrics) -> str | None:
    """'TTFC p50 .. p99 .. ms; reasoning tokens mean .. (k of n requests reasoned)', or None when
    there is nothing to add to the TTFT."""
    ttfc = metrics.ttfc_ms
    if ttfc is None or not worth_showing(metrics):
        return None

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    mean = metrics.reasoning_tokens_mean
    return (f"TTFC (first content) p50 {ms(ttfc.p50)} ms, p99 {ms(ttfc.p99)} ms; reasoning tokens mean "
            f"{'-' if mean is None else f'{mean:.1f}'} ({metrics.requests_with_reasoning} of "
            f"{metrics.requests_ok} requests reasoned)")
