"""Comparison of load runs: compare.json and compare.html, self-contained like load.html (inline
CSS, plots as data: URI PNGs, no scripts). Changes larger than the bootstrap noise are marked."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from reports.charts import new_figure, png_base64

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>chatspec load comparison: {{ verdict }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem; color: #212121; max-width: 1300px; }
.verdict { display: inline-block; font-size: 1.6rem; font-weight: bold; color: #fff; padding: .3rem 1rem;
  border-radius: 6px; background: {{ '#c62828' if regressions else '#2e7d32' }}; }
table { border-collapse: collapse; margin: 1rem 0; } th, td { border: 1px solid #ddd; padding: .25rem .5rem; }
th { background: #f5f5f5; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
td.worse { background: #ffcdd2; font-weight: bold; } td.better { background: #c8e6c9; font-weight: bold; }
.muted { color: #757575; } img { max-width: 100%; } code { background: #f5f5f5; padding: 0 .2rem; }
</style></head><body>
<h1>chatspec load comparison</h1>
<p class="muted">baseline: <code>{{ result.baseline }}</code>; {{ '%.0f' % (100 * result.confidence) }}% bootstrap
intervals from {{ result.resamples }} resamples of each run's requests (requests.jsonl).</p>
<p><span class="verdict" id="verdict">{{ verdict }}</span></p>
{% for r in regressions %}<p>worse: {{ r }}</p>{% endfor %}
{% for n in result.notes %}<p class="muted">{{ n }}</p>{% endfor %}
<table id="comparison"><tr><th>step</th><th>metric</th>{% for run in result.runs %}<th>{{ run }}</th>{% endfor %}</tr>
{% for row in result.rows %}<tr><td>{{ row.step }}</td><td>{{ row.title }}</td>
{% for c in row.runs %}<td class="n {{ cls(c) }}">{{ f(c.value) }} <span class="muted">[{{ f(c.ci[0]) }}, {{ f(c.ci[1])
}}]</span>{% if c.delta_pct is defined and c.delta_pct is not none %}<br>{{ '%+.1f%%' % c.delta_pct }}
<span class="muted">(Δ [{{ f(c.delta_ci[0]) }}, {{ f(c.delta_ci[1]) }}])</span>{% endif %}</td>{% endfor %}</tr>
{% endfor %}</table>
<p class="muted">Coloured: the change against the baseline is larger than the noise (its interval leaves out zero);
red when worse (higher latency or error rate, lower throughput), green when better.</p>
<h2>Plots</h2>
{% for name, png in charts %}<figure><img alt="{{ name }}" src="data:image/png;base64,{{ png }}"></figure>{% endfor %}
</body></html>
"""


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _cell_class(cell: Mapping[str, Any]) -> str:
    if not cell.get("significant"):
        return ""
    return "worse" if cell.get("worse") else "better"


def _charts(result: Mapping[str, Any], runs: Sequence[Any]) -> list[tuple[str, str]]:
    """Per step: the latency percentiles of every run with their intervals, and TTFT/ITL CDFs."""
    if new_figure(1, 1) is None:
        return []
    charts = []
    for label in dict.fromkeys(row["step"] for row in result["rows"] if row["metric"] != "capacity"):
        rows = [r for r in result["rows"] if r["step"] == label and r["metric"] not in ("output_tokens_per_s",
                                                                                         "error_rate")]
        fig = new_figure(13, 3.8)
        bars, cdfs = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
        names = result["runs"]
        width = 0.8 / max(len(names), 1)
        for index, name in enumerate(names):
            values, errors = [], [[], []]
            for row in rows:
                cell = next((c for c in row["runs"] if c["run"] == name), None)
                value = cell["value"] if cell and cell["value"] is not None else np.nan
                low, high = (cell["ci"] if cell else [None, None])
                values.append(value)
                errors[0].append(value - low if low is not None else 0)
                errors[1].append(high - value if high is not None else 0)
            positions = np.arange(len(rows)) + index * width
            bars.bar(positions, values, width, yerr=np.clip(errors, 0, None), capsize=2, label=Path(name).name)
        bars.set_xticks(np.arange(len(rows)) + width * (len(names) - 1) / 2,
                        [r["metric"] for r in rows], rotation=30, fontsize="small")
        bars.set_ylabel("ms"), bars.set_title(f"{label}: latency with {result['confidence']:.0%} intervals")
        bars.legend(fontsize="small")
        for run_index, (name, _doc, steps) in enumerate(runs):
            step = steps.get(label) or (next(iter(steps.values())) if len(steps) == 1 else None)
            if step is None:
                continue
            for metric, style in (("ttft", "-"), ("itl", "--")):
                arrays = [a for _, a in step.values.get(metric, [])]
                if arrays:
                    values = np.sort(np.concatenate(arrays))
                    cdfs.plot(values, np.arange(1, values.size + 1) / values.size, style, color=f"C{run_index}",
                              label=f"{Path(name).name} {metric.upper()}")  # a run's colour as in the bars
        cdfs.set_xscale("log"), cdfs.set_xlabel("ms (log)"), cdfs.set_ylabel("fraction <= x")
        cdfs.set_title("TTFT and ITL CDFs")
        if cdfs.get_lines():
            cdfs.legend(fontsize="x-small")
        charts.append((f"{label} compared", png_base64(fig)))
    return charts


def render_compare_html(result: Mapping[str, Any], runs: Sequence[Any]) -> str:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    regressions = result.get("regressions") or []
    limit = result.get("fail_if_worse_pct")
    if regressions:
        verdict = f"WORSE by more than {limit:g}%"
    elif limit is not None:
        verdict = f"NOT WORSE by more than {limit:g}%"
    else:
        significant = sum(1 for row in result["rows"] for c in row["runs"][1:] if c.get("significant"))
        verdict = f"{significant} SIGNIFICANT CHANGES" if significant else "NO SIGNIFICANT CHANGE"
    return env.from_string(TEMPLATE).render(result=result, verdict=verdict, regressions=regressions,
                                            charts=_charts(result, runs), f=_fmt, cls=_cell_class)


def write_compare_reports(result: Mapping[str, Any], runs: Sequence[Any], directory: Path | str) -> dict[str, Path]:
    """compare.json and compare.html in `directory` (created if needed)."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "compare.json", "html": folder / "compare.html"}
    paths["json"].write_text(json.dumps(result, indent=1, allow_nan=False), encoding="utf-8")
    paths["html"].write_text(render_compare_html(result, runs), encoding="utf-8")
    return paths
