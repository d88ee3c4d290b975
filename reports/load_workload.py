"""The workload part of the load report: requested against served lengths (table and histograms),
the prefix-sharing ratio and the per-turn latencies of each step (see load.workload_metrics)."""

from __future__ import annotations

from typing import Any

from load.document import LoadReport
from reports.charts import new_figure, png_base64

WORKLOAD_TEMPLATE = """
{% if length_rows %}<h2>Workload: asked against served</h2>
<table id="lengths"><tr><th>step</th><th>length</th><th>asked mean</th><th>asked min..max</th>
<th>served mean</th><th>served min..max</th><th>requests</th></tr>
{% for label, name, asked, served in length_rows %}<tr><td>{{ label }}</td><td>{{ name }}</td>
<td class="n">{{ f(asked.mean) }}</td><td class="n">{{ asked.min if asked.count else '–' }}..{{ asked.max
if asked.count else '–' }}</td><td class="n">{{ f(served.mean) }}</td><td class="n">{{ served.min if served.count
else '–' }}..{{ served.max if served.count else '–' }}</td><td class="n">{{ served.count }}</td></tr>
{% endfor %}</table>
<p class="muted">Asked: what the workload planned (prompt tokens, max_tokens); served: the answer's usage.
{% for label, short in short_rows %}{{ label }}: <b id="output-short">{{ short }}</b> requests served fewer output
tokens than asked. {% endfor %}</p>{% endif %}
{% if sharing_rows %}<table id="prefix-sharing"><tr><th>step</th><th>prefix-sharing ratio</th>
<th>reusable prompt tokens</th><th>prompt tokens</th></tr>{% for label, s in sharing_rows %}<tr><td>{{ label }}</td>
<td class="n">{{ f(s.ratio, 3) }}</td><td class="n">{{ s.reusable_prompt_tokens }}</td>
<td class="n">{{ s.prompt_tokens }}</td></tr>{% endfor %}</table>{% endif %}
{% if turn_rows %}<h3>Per conversation turn</h3>
<table id="turns"><tr><th>step</th><th>turn</th><th>requests</th><th>prompt tokens mean</th><th>TTFT p50</th>
<th>TTFT p99</th><th>E2E p50</th></tr>{% for label, t in turn_rows %}<tr><td>{{ label }}</td><td>{{ t.turn }}</td>
<td class="n">{{ t.requests }}</td><td class="n">{{ f(t.prompt_tokens_mean) }}</td>
<td class="n">{{ f(t.ttft_ms.p50) }}</td>
<td class="n">{{ f(t.ttft_ms.p99) }}</td><td class="n">{{ f(t.e2e_ms.p50) }}</td></tr>{% endfor %}</table>{% endif %}
"""


def workload_rows(doc: LoadReport) -> dict[str, list[Any]]:
    """What WORKLOAD_TEMPLATE shows, per step."""
    rows: dict[str, list[Any]] = {"length_rows": [], "short_rows": [], "sharing_rows": [], "turn_rows": []}
    for step in doc.steps:
        workload = step.workload
        if workload is None:
            continue
        for name, lengths in (("prompt tokens", workload.input_tokens), ("output tokens", workload.output_tokens)):
            if lengths.served.count or lengths.requested.count:
                rows["length_rows"].append((step.label, name, lengths.requested, lengths.served))
        if workload.output_tokens.served.count:
            rows["short_rows"].append((step.label, workload.output_short))
        if workload.prefix_sharing:
            rows["sharing_rows"].append((step.label, workload.prefix_sharing))
        rows["turn_rows"] += [(step.label, turn) for turn in workload.per_turn or []]
    return rows


def length_charts(doc: LoadReport) -> list[tuple[str, str]]:
    """Per step, prompt and output length histograms, asked and served overlaid (base64 PNGs)."""
    charts = []
    for step in doc.steps:
        workload = step.workload
        if workload is None or not workload.output_tokens.served.count:
            continue
        fig = new_figure(11, 3.2)
        if fig is None:
            return []
        for axis, lengths, title in zip(fig.subplots(1, 2), (workload.input_tokens, workload.output_tokens),
                                        ("prompt tokens", "output tokens"), strict=True):
            edges = lengths.edges
            for counts, label, style in ((lengths.served_counts, "served (usage)", "stepfilled"),
                                         (lengths.requested_counts, "asked", "step")):
                if counts:
                    axis.hist(edges[:-1], bins=edges, weights=counts, histtype=style, label=label,
                              **({"color": "black", "linewidth": 1.5} if style == "step" else {"alpha": 0.5}))
            axis.set_xlabel(title), axis.set_ylabel("requests"), axis.set_title(f"{step.label}: {title}")
            if axis.get_legend_handles_labels()[0]:
                axis.legend(fontsize="small")
        charts.append((f"lengths {step.label}", png_base64(fig)))
    return charts
