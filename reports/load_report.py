"""Load-test reports: load.json (every metric per step), load.csv (one row per step) and load.html,
self-contained (inline CSS, plots as data: URI PNGs, no scripts): throughput against concurrency or
rate, TTFT and ITL percentiles per step, latency CDFs, the formulas, SLO verdicts and warnings."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2

from load.document import LoadReport, StepRecord
from load.reasoning import worth_showing
from reports.charts import new_figure, png_base64
from reports.load_workload import WORKLOAD_TEMPLATE, length_charts, workload_rows


def _latency(metric: str, stat: str) -> Callable[[StepRecord], Any]:
    """A latency statistic (None where the step has no such summary: reports written before it)."""
    def get(step: StepRecord) -> Any:
        summary = step.metrics.latency(metric)
        return summary.stat(stat) if summary is not None else None
    return get


def _fidelity(name: str) -> Callable[[StepRecord], Any]:
    """A field of the step's fidelity (None for reports written before it)."""
    return lambda step: getattr(step.fidelity, name) if step.fidelity is not None else None


def _sharing_ratio(step: StepRecord) -> float | None:
    sharing = step.workload.prefix_sharing if step.workload is not None else None
    return sharing.ratio if sharing is not None else None


CSV_COLUMNS: tuple[tuple[str, Callable[[StepRecord], Any]], ...] = (
    ("step", lambda s: s.spec.index),
    ("label", lambda s: s.label),
    ("users", lambda s: s.spec.users),
    ("rate", lambda s: s.spec.rate),
    ("asked", _fidelity("asked")),
    ("scheduled", _fidelity("scheduled")),
    ("sent", _fidelity("sent")),
    ("done", _fidelity("done")),
    ("ended", _fidelity("end")),
    ("sent_as_asked", _fidelity("ok")),
    ("requests_sent", lambda s: s.metrics.requests_sent),
    ("requests_ok", lambda s: s.metrics.requests_ok),
    ("error_rate", lambda s: s.metrics.error_rate),
    ("requests_per_s", lambda s: s.metrics.requests_per_s),
    ("output_tokens_per_s", lambda s: s.metrics.output_tokens_per_s),
    ("goodput_per_s", lambda s: s.metrics.goodput_per_s),
    *((f"{m}_{p}_ms", _latency(m, p)) for m in ("ttft", "itl", "tpot", "e2e") for p in ("mean", "p50", "p90", "p99")),
    *((f"ttfc_{p}_ms", _latency("ttfc", p)) for p in ("mean", "p50", "p90", "p99")),
    ("requests_with_reasoning", lambda s: s.metrics.requests_with_reasoning),
    ("reasoning_tokens_mean", lambda s: s.metrics.reasoning_tokens_mean),
    ("requests_with_tool_calls", lambda s: s.metrics.requests_with_tool_calls),
    ("send_lag_p99_ms", _latency("send_lag", "p99")),
    ("prefix_sharing_ratio", _sharing_ratio),
    ("output_short", lambda s: s.workload.output_short if s.workload is not None else None),
    ("client_cpu_max", lambda s: max(s.client.cpu_fraction, default=None)),
    ("slo_met", lambda s: s.slo_met),
    ("warnings", lambda s: " | ".join(s.warnings)),
)

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ doc.title }}: {{ verdict }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem; color: #212121; max-width: 1300px; }
.verdict { display: inline-block; font-size: 1.6rem; font-weight: bold; color: #fff; padding: .3rem 1rem;
  border-radius: 6px; background: {{ '#2e7d32' if verdict == 'OK' or verdict.startswith('CAPACITY')
  else ('#ef6c00' if verdict == 'CLIENT-LIMITED' else '#c62828') }}; }
.aborted { border-left: 6px solid #c62828; background: #ffebee; padding: .5rem 1rem; }
table { border-collapse: collapse; margin: 1rem 0; } th, td { border: 1px solid #ddd; padding: .25rem .5rem; }
th { background: #f5f5f5; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
td.miss { background: #c62828; color: #fff; font-weight: bold; } td.met { background: #2e7d32; color: #fff; }
.warn { background: #fff3e0; border-left: 4px solid #ef6c00; padding: .4rem .8rem; margin: .3rem 0; }
img { max-width: 100%; } .muted { color: #757575; } code { background: #f5f5f5; padding: 0 .2rem; }
</style></head><body>
<h1>{{ doc.title }}</h1>
<p class="muted">{% for k, v in doc.target.items() %}<b>{{ k }}</b>: {{ v }} · {% endfor %}
started {{ doc.started_at }}, {{ '%.1f' % doc.duration_s }} s</p>
<p><span class="verdict" id="verdict">{{ verdict }}</span></p>
{% if error_kinds %}<p id="error-summary"><b>Errors:</b> {{ error_total }} of {{ sent_total }} requests
({{ '%.1f%%' % (100 * error_total / [sent_total, 1]|max) }}):
{% for kind, count in error_kinds.items() %}{{ kind }} {{ count }}{{ ', ' if not loop.last }}{% endfor %}
(table below).</p>{% endif %}
{% if doc.aborted %}<p class="aborted" id="aborted"><b>The run stopped early{{ ' (partial report)'
if doc.interrupted else '' }}:</b> {{ doc.aborted }}.
The step's numbers cover the time until then{% if doc.steps_not_run %}; steps not run:
{{ doc.steps_not_run|join(', ') }}{% endif %}.</p>{% endif %}
{% for step in doc.steps %}{% for problem in (step.fidelity.problems if step.fidelity else []) %}
<p class="aborted not-sent">{{ step.label }}: <b>not sent as asked:</b> {{ problem }}.</p>{% endfor %}{% endfor %}
{% for step in doc.steps %}{% for w in step.warnings %}
<div class="warn">{{ step.label }}: {{ w }}</div>{% endfor %}{% endfor %}

<h2>Sent as asked?</h2>
<table id="fidelity"><tr><th>step</th><th>asked</th><th>scheduled</th><th>missed (users busy)</th><th>sent</th>
<th>done</th><th>ended</th><th>rate sent / asked</th><th>mean in flight / users</th><th>verdict</th></tr>
{% for s in doc.steps %}{% if s.fidelity %}{% set d = s.fidelity %}<tr><th>{{ s.label }}</th>
<td class="n">{{ d.asked if d.asked is not none else '–' }}</td><td class="n">{{ d.scheduled }}</td>
<td class="n">{{ d.missed }}</td><td class="n">{{ d.sent }}</td><td class="n">{{ d.done }}</td>
<td>{{ d.end }}</td><td class="n">{{ f(d.achieved_rate, 3) }} / {{ f(d.asked_rate, 3) }}</td>
<td class="n">{{ f(d.mean_concurrency, 2) }} / {{ d.users }}</td>
<td class="{{ 'met' if d.ok else 'miss' }}">{{ 'sent as asked' if d.ok else 'NOT SENT AS ASKED' }}</td></tr>
{% endif %}{% endfor %}</table>
<p class="muted">Scheduled: turns that came due (a closed-loop user's turn, an open-loop or trace slot); sent: requests
whose bytes went out; done: requests that ended, answered or failed. A step ends when its count or schedule is used
up and every sent request has ended, or at --duration, Ctrl-C or when the endpoint is gone.</p>

<h2>Steps</h2>
<table id="steps"><tr><th>step</th><th>sent</th><th>ok</th><th>errors</th><th>req/s</th><th>output tok/s</th>
<th>goodput/s</th>
<th>TTFT p50</th><th>TTFT p99</th><th>ITL p50</th><th>ITL p99</th><th>TPOT p50</th>
<th>E2E p50</th><th>E2E p99</th><th>send lag p99</th><th>client CPU</th></tr>
{% for s in doc.steps %}{% set m = s.metrics %}<tr><th>{{ s.label }}</th>
<td class="n">{{ m.requests_sent }}</td><td class="n">{{ m.requests_ok }}</td><td class="n">{{ m.requests_failed }}</td>
<td class="n">{{ f(m.requests_per_s) }}</td><td class="n">{{ f(m.output_tokens_per_s) }}</td>
<td class="n">{{ f(m.goodput_per_s) }}</td>
<td class="n">{{ f(m.ttft_ms.p50) }}</td><td class="n">{{ f(m.ttft_ms.p99) }}</td>
<td class="n">{{ f(m.itl_ms.p50) }}</td><td class="n">{{ f(m.itl_ms.p99) }}</td>
<td class="n">{{ f(m.tpot_ms.p50) }}</td><td class="n">{{ f(m.e2e_ms.p50) }}</td>
<td class="n">{{ f(m.e2e_ms.p99) }}</td>
<td class="n">{{ f(m.send_lag_ms.p99 if m.send_lag_ms else none) }}</td>
<td class="n">{{ s.client.cpu_fraction | map('round', 2) | join(', ') }}</td></tr>
{% endfor %}</table>
<p class="muted">Latencies in milliseconds; percentiles are exact over every raw sample of every worker.</p>
{% if reasoning_rows %}<h2>Reasoning and first content</h2>
<table id="reasoning"><tr><th>step</th><th>requests that reasoned</th><th>reasoning tokens mean</th>
<th>reasoning tokens total</th><th>output tokens mean</th><th>TTFT p50</th><th>TTFC p50</th><th>TTFC p90</th>
<th>TTFC p99</th></tr>
{% for s in reasoning_rows %}{% set m = s.metrics %}<tr><th>{{ s.label }}</th>
<td class="n">{{ m.requests_with_reasoning }} of {{ m.requests_ok }}</td><td class="n">{{ f(m.reasoning_tokens_mean)
}}</td><td class="n">{{ m.reasoning_tokens_total }}</td><td class="n">{{ f(m.output_tokens_mean) }}</td>
<td class="n">{{ f(m.ttft_ms.p50) }}</td><td class="n">{{ f(m.ttfc_ms.p50) }}</td><td class="n">{{ f(m.ttfc_ms.p90)
}}</td><td class="n">{{ f(m.ttfc_ms.p99) }}</td></tr>
{% endfor %}</table>
<p class="muted">TTFT counts the first token of any kind (reasoning included); TTFC, time to first content, the
first token of the answer itself. Reasoning tokens are part of the output tokens.</p>{% endif %}
{% include "workload" %}

{% if error_rows %}<h2>Errors by kind</h2>
<table id="errors"><tr><th>step</th><th>kind</th><th>requests</th><th>share of sent</th><th>example</th></tr>
{% for label, kind, count, share, example in error_rows %}<tr><td>{{ label }}</td><td>{{ kind }}</td>
<td class="n">{{ count }}</td><td class="n">{{ '%.1f%%' % (100 * share) }}</td><td><code>{{ example }}</code></td></tr>
{% endfor %}</table>{% endif %}

{% if doc.capacity %}{% set c = doc.capacity %}<h2>Capacity search</h2>
<p id="capacity">{% if c.capacity is not none %}Highest {{ 'rate' if c.mode == 'rate' else 'concurrency' }} meeting
every objective: <b>{{ c.capacity_label }}</b>{% if c.first_failing is not none %} (the next level probed,
{{ f(c.first_failing, 3) }}, missed){% endif %}.{% else %}No level probed met every objective.{% endif %}
The search ended because {{ c.stop_reason }}.</p>
{% if c.margin %}<table id="margin"><tr><th>objective at the answer</th><th>limit</th><th>measured</th>
<th>headroom</th></tr>{% for m in c.margin %}<tr><td>{{ m.objective }}</td><td class="n">{{ f(m.limit, 3) }}</td>
<td class="n">{{ f(m.measured, 3) }}</td><td class="n">{{ '%+.0f%%' % (100 * m.headroom) if m.headroom is not none
else '–' }}</td></tr>{% endfor %}</table>{% endif %}
<table id="probes"><tr><th>#</th><th>level</th><th>verdict</th><th>missed</th><th>stopped early</th>
<th>goodput/s</th><th>output tok/s</th><th>s</th></tr>{% for p in c.probes %}<tr><td class="n">{{ p.order }}</td>
<td>{{ p.label }}</td><td class="{{ 'met' if p.passed else 'miss' }}">{{ 'met' if p.passed else 'missed' }}</td>
<td>{{ (p.missed + ([p.unsustainable] if p.get('unsustainable') else []))|join(', ') }}</td>
<td>{{ p.stopped_early or '' }}</td><td class="n">{{ f(p.goodput_per_s) }}</td>
<td class="n">{{ f(p.output_tokens_per_s) }}</td><td class="n">{{ f(p.duration_s) }}</td></tr>{% endfor %}</table>
{% endif %}

{% if slo_rows %}<h2>Service-level objectives</h2>
<table id="slo"><tr><th>step</th><th>objective</th><th>limit</th><th>measured</th><th>unit</th><th>verdict</th></tr>
{% for label, v in slo_rows %}<tr><td>{{ label }}</td><td>{{ v.objective }}</td>
<td class="n">{{ f(v.limit, 3 if v.unit == 'fraction' else 1) }}</td>
<td class="n">{{ f(v.measured, 3 if v.unit == 'fraction' else 1) }}</td>
<td>{{ v.unit }}</td>
<td class="{{ 'met' if v.met else 'miss' }}">{{ 'met' if v.met else 'MISSED' }}</td></tr>
{% endfor %}</table>{% endif %}

{% if doc.calibration %}<h2>Calibration against the mock engine</h2>
<p>Configured truth: TTFT {{ doc.calibration.ttft_ms }} ms, ITL {{ doc.calibration.itl_ms }} ms.</p>
<table id="calibration"><tr><th>step</th><th>metric</th><th>percentile</th><th>truth ms</th><th>measured ms</th>
<th>error ms</th></tr>{% for r in doc.calibration.errors %}<tr><td>{{ r.step }}</td><td>{{ r.metric }}</td>
<td>{{ r.percentile }}</td><td class="n">{{ f(r.truth_ms) }}</td><td class="n">{{ f(r.measured_ms, 3) }}</td>
<td class="n">{{ f(r.error_ms, 3) }}</td></tr>{% endfor %}</table>{% endif %}

{% if doc.server_metrics %}<p class="muted" id="scrape">Server side: {{ doc.server_metrics.scrapes }}
scrapes of <code>{{ doc.server_metrics.url }}</code> ({{ doc.server_metrics.series|join(', ') }}){% if
doc.server_metrics.failures %}, {{ doc.server_metrics.failures }} failed (last: {{ doc.server_metrics.last_error
}}){% endif %}; drawn in each step's plot over time.</p>{% endif %}
<h2>Plots</h2>
{% for name, png in charts %}<figure><img alt="{{ name }}" src="data:image/png;base64,{{ png }}"></figure>{% endfor %}
{% if not charts %}<p class="muted">matplotlib is not importable: no plots.</p>{% endif %}

<h2>How each number is computed</h2>
<ul>{% for k, v in doc.formulas.items() %}<li><code>{{ k }}</code>: {{ v }}</li>{% endfor %}</ul>
<h2>Settings</h2>
<table>{% for k, v in doc.settings.items() %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}
{% for k, v in doc.machine.items() %}<tr><th>client {{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>
</body></html>
"""


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _level_charts(doc: LoadReport) -> list[tuple[str, str]]:
    """Throughput, goodput and TTFT/ITL percentiles against the level: only when several levels
    were run (one dot per plot says nothing); steps in level order (a capacity search is not)."""
    steps = sorted(doc.steps, key=lambda s: s.level)
    if len({s.level for s in steps}) < 2:
        return []
    open_loop = steps[0].spec.rate is not None
    levels = [s.level for s in steps]
    xlabel = "arrival rate (requests/s)" if open_loop else "concurrent users"
    charts = []
    capacity = doc.capacity["capacity"] if doc.capacity else None

    def mark_capacity(axes: Any) -> None:  # the search's answer as a dotted vertical line
        for axis in axes if capacity is not None else ():
            axis.axvline(capacity, color="#2e7d32", linestyle=":", linewidth=1.2, label="capacity")

    fig = new_figure(11, 3.6)
    ax = fig.subplots(1, 2)
    ax[0].plot(levels, [s.metrics.output_tokens_per_s for s in steps], "o-", label="output tokens/s")
    ax[0].set_xlabel(xlabel), ax[0].set_ylabel("output tokens/s"), ax[0].set_title("Throughput")
    ax[1].plot(levels, [s.metrics.requests_per_s for s in steps], "o-", label="requests/s")
    if any(s.metrics.goodput_per_s is not None for s in steps):
        ax[1].plot(levels, [s.metrics.goodput_per_s or 0 for s in steps], "s--", label="goodput/s")
    mark_capacity(ax)
    ax[1].set_xlabel(xlabel), ax[1].set_ylabel("requests/s"), ax[1].legend(), ax[1].set_title("Requests")
    charts.append(("throughput", png_base64(fig)))
    fig = new_figure(11, 3.6)
    slo = doc.settings.get("slo") or {}
    for axis, metric, title in zip(fig.subplots(1, 2), ("ttft", "itl"), ("TTFT", "ITL"), strict=True):
        for pct, style in (("p50", "o-"), ("p90", "^-"), ("p99", "s-")):
            axis.plot(levels, [_latency(metric, pct)(s) for s in steps], style, label=pct)
        for key, limit in slo.items():  # the objectives on this metric, as horizontal lines
            if key.startswith(metric + "_p"):
                axis.axhline(limit, color="#c62828", linestyle="--", linewidth=1, label=f"SLO {key}")
        mark_capacity([axis])
        axis.set_xlabel(xlabel), axis.set_ylabel("ms"), axis.set_title(f"{title} percentiles"), axis.legend()
    charts.append(("latency percentiles", png_base64(fig)))
    return charts


def _timeline_chart(step: StepRecord) -> str | None:
    """One step over time, like Locust's charts: in flight, output tokens/s, TTFT and ITL per second,
    and the scraped server series on the same axis; the warm-up shaded."""
    line = step.timeline
    if line is None or not line.t:
        return None
    server = step.server or {}
    panels = 5 if server.get("series") else 4
    fig = new_figure(11, 1.7 * panels + 0.6)
    axes = fig.subplots(panels, 1, sharex=True)
    t = [x + line.bin_s / 2 for x in line.t]  # each bin drawn at its middle
    axes[0].plot(t, line.inflight, "-", label="in flight")
    axes[0].bar(t, line.failed, width=line.bin_s * 0.8, color="#c62828", alpha=0.6, label="failed")
    axes[0].set_ylabel("requests")
    axes[1].plot(t, line.output_tokens_per_s, "-", color="#1565c0")
    axes[1].set_ylabel("output tok/s")
    for axis, metric, name in ((axes[2], "ttft", "TTFT"), (axes[3], "itl", "ITL")):
        for pct, style in (("p50", "-"), ("p99", "--")):
            values = [v if v is not None else float("nan") for v in getattr(line, f"{metric}_{pct}_ms")]
            axis.plot(t, values, style, label=f"{name} {pct}")
        axis.set_ylabel(f"{name} ms")
    if panels == 5:  # gauges on the left axis, counters' rates on their own right axis
        rates = set(server.get("rates", ()))
        right = axes[4].twinx() if rates else None
        for index, (name, values) in enumerate(server["series"].items()):
            axis = right if name in rates and right is not None else axes[4]
            axis.plot(server["t"], [v if v is not None else float("nan") for v in values], ".-", label=name,
                      color=f"C{index}")
        axes[4].set_ylabel("server")
        if right is not None:
            right.set_ylabel("per second")
            right.legend(fontsize="x-small", loc="upper right")
    warmup = step.spec.warmup_s
    for axis in axes:
        if warmup > 0:
            axis.axvspan(0, warmup, color="#bdbdbd", alpha=0.3, linewidth=0)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize="x-small", loc="upper left")
    axes[-1].set_xlabel("seconds since the step started (grey: warm-up, not measured)")
    axes[0].set_title(f"{step.label} over time")
    return png_base64(fig)


def _charts(doc: LoadReport) -> list[tuple[str, str]]:
    """Level plots (several levels only), latency CDFs and each step over time, as base64 PNGs."""
    steps = doc.steps
    if not steps or new_figure(1, 1) is None:
        return []
    charts = _level_charts(doc)
    fig = new_figure(13, 3.6)
    for axis, metric, title in zip(fig.subplots(1, 3), ("ttft_ms", "itl_ms", "e2e_ms"), ("TTFT", "ITL", "E2E"),
                                   strict=True):
        for s in steps:
            points = s.cdf.get(metric)
            if points is not None and points.x:
                axis.plot(points.x, points.y, label=s.label)
        axis.set_xlabel("ms"), axis.set_ylabel("fraction <= x"), axis.set_title(f"{title} CDF")
        if len(steps) <= 8 and axis.get_lines():  # no legend for a step without answered requests
            axis.legend(fontsize="small")
    charts.append(("latency CDFs", png_base64(fig)))
    for step in steps:
        png = _timeline_chart(step)
        if png is not None:
            charts.append((f"{step.label} over time", png))
    return charts


def render_load_html(doc: LoadReport) -> str:
    """The self-contained HTML page for one load report document."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                             loader=jinja2.DictLoader({"workload": WORKLOAD_TEMPLATE}))
    verdict = "SLO MISSED" if not doc.slo_met else ("CLIENT-LIMITED" if doc.client_limited else "OK")
    sent = sum(s.metrics.requests_sent for s in doc.steps)
    failed = sum(s.metrics.requests_failed for s in doc.steps)
    if failed and verdict != "SLO MISSED":  # errors are never "OK", SLO or not; the warnings say the rest
        verdict = f"ERRORS {failed}/{sent} ({100 * failed / max(sent, 1):.1f}%)"
    if not doc.fidelity_ok:  # numbers of a load that was not the one asked for are never OK
        verdict = "NOT SENT AS ASKED"
    capacity = doc.capacity
    if capacity:  # probes past the capacity miss the SLO (or go unsent) by design: the answer is the verdict
        verdict = f"CAPACITY {capacity['capacity_label']}" if capacity["capacity"] is not None else "NO CAPACITY"
    if doc.aborted:
        verdict = "INTERRUPTED" if doc.interrupted else "ABORTED"
    error_rows = [(s.label, kind, count, count / max(s.metrics.requests_sent, 1),
                   s.metrics.error_examples.get(kind, ""))
                  for s in doc.steps for kind, count in s.metrics.errors_by_kind.items()]
    slo_rows = [(s.label, v) for s in doc.steps for v in s.slo]
    reasoning_rows = [s for s in doc.steps if worth_showing(s.metrics)]
    error_kinds: dict[str, int] = {}
    for step in doc.steps:
        for kind, count in step.metrics.errors_by_kind.items():
            error_kinds[kind] = error_kinds.get(kind, 0) + count
    return env.from_string(TEMPLATE).render(doc=doc, verdict=verdict, slo_rows=slo_rows, error_rows=error_rows,
                                            error_kinds=error_kinds, error_total=failed, sent_total=sent,
                                            reasoning_rows=reasoning_rows,
                                            charts=_charts(doc) + length_charts(doc), f=_fmt,
                                            **workload_rows(doc))


def write_load_reports(doc: LoadReport, directory: Path | str) -> dict[str, Path]:
    """Write load.json, load.csv and load.html into `directory` (created if needed)."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "load.json", "csv": folder / "load.csv", "html": folder / "load.html"}
    paths["json"].write_text(json.dumps(doc.to_json(), indent=1, allow_nan=False), encoding="utf-8")
    with open(paths["csv"], "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([name for name, _ in CSV_COLUMNS])
        for step in doc.steps:
            writer.writerow([getter(step) for _, getter in CSV_COLUMNS])
    paths["html"].write_text(render_load_html(doc), encoding="utf-8")
    return paths
