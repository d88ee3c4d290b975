"""`summary.md`: the run in Markdown for a CI job summary or a pull-request comment: the verdict,
each new failure with the curl line that reproduces it, the expected ones with their reasons,
and the fixed ones. Short on purpose; the HTML report has everything."""

from __future__ import annotations

from pathlib import Path

from reports.model import CheckResult, RunReport

_ICON = {"PASSED": "✅", "FAILED": "❌", "ABORTED": "⚠️"}
CURL_LIMIT = 1500  # characters of a curl line shown; a 16 MiB body is not a comment


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _failure(result: CheckResult) -> list[str]:
    lines = [f"- **`{result.id}`** [{result.severity}] {_one_line(result.message)}"]
    if result.curl:
        curl = result.curl if len(result.curl) <= CURL_LIMIT else result.curl[:CURL_LIMIT] + " …"
        lines += ["  <details><summary>reproduce</summary>", "", "  ```bash", f"  {curl}", "  ```", "",
                  "  </details>"]
    return lines


def render_summary(report: RunReport) -> str:
    """The Markdown summary of a conformance run."""
    verdict = report.verdict()
    target = report.target
    counts = ", ".join(f"{n} {outcome.replace('_', ' ')}" for outcome, n in report.counts().items() if n)
    out = [f"## chatspec conformance: {verdict} {_ICON.get(verdict, '')}".rstrip(), "",
           f"`{target.get('chat_url', target.get('base_url', '?'))}` · model `{target.get('model', '?')}` · "
           f"profile `{target.get('profile', '?')}` · fails on `{report.fail_on}`", "",
           f"{counts or 'no checks'} in {report.duration_s:.1f} s"]
    if report.aborted:
        out += ["", f"**The run stopped early:** {report.aborted}. {len(report.not_run)} check(s) did not run."]
    shared = report.shared_causes()
    if shared:
        out += ["", "### Failures sharing one cause", ""]
        out += [f"- {cause}: {len(ids)} checks ({', '.join(f'`{i}`' for i in ids)})" for cause, ids in shared.items()]
    new = report.new_failures()
    if new:
        out += ["", f"### New failures ({len(new)})", ""] + [line for r in new for line in _failure(r)]
    tolerated = report.tolerated()
    if tolerated:
        out += ["", f"### Should-level failures, not failing the run ({len(tolerated)})", ""]
        out += [line for r in tolerated for line in _failure(r)]
    expected = report.expected()
    if report.baseline is not None:
        out += ["", f"### Expected by the baseline `{report.baseline}` ({len(expected)})", ""]
        out += [f"- `{r.id}` [{r.severity}]: {_one_line(r.baseline_reason or '')}" for r in expected] or ["none"]
    if report.fixed:
        out += ["", f"### Fixed: expected to fail, now pass ({len(report.fixed)})", ""]
        out += [f"- `{check_id}`" for check_id in report.fixed]
    return "\n".join(out) + "\n"


def write_summary(report: RunReport, path: Path | str) -> Path:
    """Write `report`'s Markdown summary at `path`."""
    path = Path(path)
    path.write_text(render_summary(report), encoding="utf-8", errors="backslashreplace")
    return path
