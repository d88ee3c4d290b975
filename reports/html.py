"""A self-contained HTML report: verdict, feature-by-outcome table, spec decisions, failures
that expand, and every check. Inline CSS and an inline (data: URI) PNG chart when matplotlib is
importable; no scripts, no external resources. Jinja2 autoescaping keeps request/response text inert."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2

from reports.charts import new_figure, png_base64
from reports.model import OUTCOMES, RunReport

LABELS = {"passed": "passed", "failed": "failed", "error": "error", "skipped": "skipped",
          "not_supported": "not supported"}
COLORS = {"passed": "#2e7d32", "failed": "#c62828", "error": "#ef6c00", "skipped": "#757575",
          "not_supported": "#6a1b9a"}

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ report.title }}: {{ verdict }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem; color: #212121; max-width: 1200px; }
h1 { margin-bottom: .2rem; } .target { color: #555; margin-top: 0; }
.verdict { display: inline-block; font-size: 2rem; font-weight: bold; color: #fff; padding: .3rem 1rem;
  border-radius: 6px; background: {{ '#c62828' if failed else '#2e7d32' }}; }
table { border-collapse: collapse; margin: 1rem 0; } th, td { border: 1px solid #ddd; padding: .3rem .6rem; }
th { background: #f5f5f5; text-align: left; } td.n { text-align: right; min-width: 4rem; }
tr.total th, tr.total td { border-top: 2px solid #9e9e9e; }
{% for o in outcomes %}td.{{ o }}.nz { background: {{ colors[o] }}; color: #fff; font-weight: bold; }
.tag.{{ o }} { color: {{ colors[o] }}; font-weight: bold; }
{% endfor %}
details { border: 1px solid #e0e0e0; border-radius: 4px; margin: .4rem 0; padding: .3rem .6rem; }
summary { cursor: pointer; } pre { background: #fafafa; padding: .5rem; overflow-x: auto; white-space: pre-wrap; }
.muted { color: #757575; }
.aborted { border-left: 6px solid #c62828; background: #ffebee; padding: .5rem 1rem; }
</style></head><body>
<h1>{{ report.title }}</h1>
<p class="target">{% for k, v in report.target.items() %}<b>{{ k }}</b>: {{ v }}{% if not loop.last %} ·
{% endif %}{% endfor %}<br>started {{ report.started_at }}, {{ '%.1f' % report.duration_s }} s</p>
<p><span class="verdict" id="verdict">{{ verdict }}</span>
{% for o in outcomes %} <span class="tag {{ o }}">{{ counts[o] }} {{ labels[o] }}</span>{% endfor %}</p>
<p class="muted" id="severity">Severities as RFC 2119 words them: a <b>must</b> check is an absolute requirement,
a <b>should</b> check a recommendation. This run fails on {{ 'must-level failures only' if report.fail_on == 'must'
else 'must- and should-level failures' }}.{% if tolerated %}
{{ tolerated|length }} should-level check(s) failed without failing it: {{ tolerated|map(attribute='id')|join(', ') }}.
{% endif %}</p>
{% if report.baseline %}<p id="baseline">Baseline <code>{{ report.baseline }}</code>:
{{ expected|length }} expected failure(s), {{ new|length }} new{% if new %}: <b>{{ new|map(attribute='id')|join(', ')
}}</b>{% endif %}.{% if report.fixed %} Fixed (expected to fail, now pass): {{ report.fixed|join(', ') }}.
{% endif %}</p>
{% endif %}
{% if report.aborted %}<p class="aborted" id="aborted"><b>The run stopped early:</b> {{ report.aborted }}.
{{ report.not_run|length }} check(s) did not run{% if report.not_run %}: {{ report.not_run|join(', ') }}{% endif %}.</p>
{% endif %}
<h2>By severity</h2>
<table id="severities"><tr><th>severity</th>{% for o in outcomes %}<th>{{ labels[o] }}</th>{% endfor %}</tr>
{% for severity, row in by_severity.items() %}<tr><th>{{ severity }}</th>
{% for o in outcomes %}<td class="n {{ o }}{{ ' nz' if row[o] else '' }}">{{ row[o] }}</td>{% endfor %}</tr>
{% endfor %}</table>
<h2>By feature</h2>
<table id="features"><tr><th>feature</th>{% for o in outcomes %}<th>{{ labels[o] }}</th>{% endfor %}</tr>
{% for feature, row in by_feature.items() %}<tr><th>{{ feature }}</th>
{% for o in outcomes %}<td class="n {{ o }}{{ ' nz' if row[o] else '' }}">{{ row[o] }}</td>{% endfor %}</tr>
{% endfor %}<tr class="total"><th>total</th>
{% for o in outcomes %}<td class="n {{ o }}{{ ' nz' if counts[o] else '' }}">{{ counts[o] }}</td>{% endfor %}</tr>
</table>
{% if chart %}<img alt="outcomes per feature" src="data:image/png;base64,{{ chart }}">{% endif %}

<h2>Spec decisions</h2>{% if report.notes %}
<p class="muted">Where the API's documentation contradicts itself or is silent, the spec records a decision;
checks hold endpoints to it.</p>
<table><tr><th>parameter</th><th>the documentation says</th><th>decision</th></tr>
{% for n in report.notes %}<tr><td>{{ n.get('param', '') }}</td><td>{{ n.get('doc-says', '') }}</td>
<td>{{ n.get('decision', '') }}</td></tr>{% endfor %}</table>
{% else %}<p class="muted">none recorded</p>{% endif %}

{% if shared_causes %}<h2>Failures sharing one cause</h2>
<ul id="causes">{% for cause, ids in shared_causes.items() %}<li><b>{{ cause }}</b>: {{ ids|length }} checks
({{ ids|join(', ') }})</li>{% endfor %}</ul>{% endif %}
{% if failures %}<h2>Failures ({{ failures|length }})</h2>
{% for r in failures %}<details><summary><span class="tag {{ r.outcome }}">{{ labels[r.outcome] }}</span>
<b>{{ r.id }}</b> <span class="sev">[{{ r.severity }}]</span> <span class="baseline">[{{ r.baseline or 'new'
}}]</span> — {{ r.message }}</summary>
{% if r.baseline_reason %}<p class="muted">expected by the baseline: {{ r.baseline_reason }}</p>{% endif %}
{% if r.spec_note %}<p class="muted">spec: {{ r.spec_note }}</p>{% endif %}
{% if r.request is not none %}<p>Request</p><pre>{{ r.request | tojson_pretty }}</pre>{% endif %}
{% if r.response_excerpt %}<p>Response</p><pre>{{ r.response_excerpt }}</pre>{% endif %}
{% if r.curl %}<p>Reproduce</p><pre>{{ r.curl }}</pre>{% endif %}
</details>{% endfor %}{% endif %}

<h2>All checks ({{ report.results|length }})</h2>
<table id="checks"><tr><th>check</th><th>feature</th><th>category</th><th>severity</th><th>outcome</th><th>s</th>
<th>note</th></tr>
{% for r in report.results %}<tr><td>{{ r.id }}</td><td>{{ r.feature }}</td><td>{{ r.category }}</td>
<td>{{ r.severity }}</td>
<td class="tag {{ r.outcome }}">{{ labels[r.outcome] }}</td><td class="n">{{ '%.2f' % r.duration_s }}</td>
<td>{{ r.message }}</td></tr>{% endfor %}</table>
</body></html>
"""


def _chart_png(report: RunReport) -> str | None:
    """A stacked bar chart of outcomes per feature as base64 PNG; None without matplotlib."""
    table = report.by_feature()
    if not table:
        return None
    features = list(table)
    fig = new_figure(8, 0.35 * len(features) + 1.2)
    if fig is None:
        return None
    labels = [feature.replace("$", r"\$") for feature in features]  # no mathtext from feature names
    ax = fig.add_subplot()
    left = [0] * len(features)
    for outcome in OUTCOMES:
        values = [table[f][outcome] for f in features]
        if any(values):
            ax.barh(labels, values, left=left, color=COLORS[outcome], label=LABELS[outcome])
            left = [a + b for a, b in zip(left, values, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("checks")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small", frameon=False)
    return png_base64(fig)


def render_html(report: RunReport) -> str:
    """The report as one HTML document."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["tojson_pretty"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False, default=str)
    failed = report.failed()
    return env.from_string(TEMPLATE).render(
        report=report, verdict={"PASSED": "PASS", "FAILED": "FAIL"}.get(report.verdict(), report.verdict()),
        failed=failed, outcomes=OUTCOMES, labels=LABELS,
        colors=COLORS, counts=report.counts(), by_feature=report.by_feature(), by_severity=report.by_severity(),
        tolerated=report.tolerated(), expected=report.expected(), shared_causes=report.shared_causes(),
        new=[r for r in report.results if r.broken and r.baseline == "new"],
        failures=[r for r in report.results if r.outcome in ("failed", "error")], chart=_chart_png(report),
    )


def write_html(report: RunReport, path: Path | str) -> Path:
    """Write `report` as a self-contained HTML file at `path`."""
    path = Path(path)
    path.write_text(render_html(report), encoding="utf-8", errors="xmlcharrefreplace")  # lone surrogates
    return path
