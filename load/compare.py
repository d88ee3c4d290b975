"""`python -m load compare RUN_A RUN_B [...]`: the same metrics of several runs side by side, the
change against the first run, and whether that change is larger than run-to-run noise.

A run is a report folder of `python -m load` (load.json and requests.jsonl). Steps are matched by
label (a single step each is matched whatever its label). Noise comes from the raw samples in
requests.jsonl: each run's requests are resampled with replacement (`--resamples` times; a
request's inter-token gaps go with it, since gaps of one stream are not independent), giving a
bootstrap confidence interval of every percentile, throughput and error rate, and of the
difference between two runs. A change is *significant* when the interval of the difference
leaves out zero. `--fail-if-worse PCT`: exit 1 when some metric got worse by more than PCT
percent and significantly, so CI can gate a regression.

Exit codes: 0 compared (and, with --fail-if-worse, nothing worse past the limit); 1 a regression
past --fail-if-worse; 2 a run cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from load.document import LoadReport, StepRecord
from load.export import FILE_NAME, read_requests

# (key, title, metric source, percentile or None, higher is better)
METRICS: tuple[tuple[str, str, str, float | None, bool], ...] = (
    ("ttft_p50", "TTFT p50 (ms)", "ttft", 50, False),
    ("ttft_p99", "TTFT p99 (ms)", "ttft", 99, False),
    ("itl_p50", "ITL p50 (ms)", "itl", 50, False),
    ("itl_p99", "ITL p99 (ms)", "itl", 99, False),
    ("tpot_p50", "TPOT p50 (ms)", "tpot", 50, False),
    ("e2e_p50", "E2E p50 (ms)", "e2e", 50, False),
    ("e2e_p99", "E2E p99 (ms)", "e2e", 99, False),
    ("output_tokens_per_s", "output tokens/s", "tokens", None, True),
    ("error_rate", "error rate", "failed", None, False),
)


class RunError(Exception):
    """A run folder that cannot be compared: exit 2 with this message."""


@dataclass
class StepSamples:
    """One step's raw samples, per request (so resampling keeps a stream's gaps together)."""

    label: str
    window_s: float
    requests: int = 0  # sent in the window
    # metric -> (index of the request among the step's requests, its values of that metric)
    values: dict[str, list[tuple[int, np.ndarray]]] = field(default_factory=dict)
    tokens: list[float] = field(default_factory=list)  # output tokens per request (0 if it failed)
    failed: list[float] = field(default_factory=list)  # 1.0 per failed request


def load_run(path: str) -> tuple[str, LoadReport, dict[str, StepSamples]]:
    """(name, load.json, samples per step label) of a run folder (or its load.json)."""
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    doc_path, requests_path = folder / "load.json", folder / FILE_NAME
    if not doc_path.is_file() or not requests_path.is_file():
        raise RunError(f"{path}: not a load report folder (needs load.json and {FILE_NAME})")
    try:
        doc = LoadReport.read(doc_path)
        steps = {s.spec.index: StepSamples(s.label, s.metrics.window_s) for s in doc.steps}
        for line in read_requests(requests_path):
            step = steps.get(line["step"])
            if step is None or not line["in_window"]:
                continue
            request = step.requests
            step.requests += 1
            step.failed.append(0.0 if line["ok"] else 1.0)
            events = line.get("token_events", line["content_events"])  # every kind; older files: content only
            step.tokens.append(float(line["completion_tokens"] or events or 0) if line["ok"] else 0.0)
            if not line["ok"]:
                continue
            tokens = np.asarray(line["token_ms"], dtype=np.float64)
            e2e = (line["end_s"] - line["send_s"]) * 1000.0
            per = {"e2e": np.array([e2e]), "itl": np.diff(tokens)}
            if tokens.size:
                per["ttft"] = tokens[:1]
                out = line["completion_tokens"] or tokens.size
                if out >= 2:
                    per["tpot"] = np.array([(e2e - tokens[0]) / (out - 1)])
            for metric, values in per.items():
                step.values.setdefault(metric, []).append((request, values))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunError(f"{path}: cannot read the run: {exc}") from None
    return str(path), doc, {s.label: s for s in steps.values()}


CHUNK_CELLS = 4_000_000  # resamples x values handled at once (memory stays in tens of MB)


def _owners(arrays: list[tuple[int, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """All values sorted, and the request each came from (in the same order)."""
    if not arrays:
        return np.empty(0), np.empty(0, dtype=np.int64)
    values = np.concatenate([a for _, a in arrays])
    owners = np.repeat([i for i, _ in arrays], [a.size for _, a in arrays])
    order = np.argsort(values, kind="stable")
    return values[order], owners[order]


def bootstrap(step: StepSamples, resamples: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per metric, `resamples` values of it over resampled requests (empty where it has no samples).

    A resample draws the step's requests with replacement; a percentile over it is the weighted
    (inverted-CDF) percentile of the values with each request's draw count as weight, so one sort
    serves every resample.
    """
    n = step.requests
    out: dict[str, np.ndarray] = {}
    if n == 0:
        return {key: np.empty(0) for key, *_ in METRICS}
    counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)])
    for key, _title, source, pct, _higher in METRICS:
        if pct is None:
            column = np.asarray(step.tokens if source == "tokens" else step.failed)
            totals = counts @ column
            out[key] = totals / step.window_s if source == "tokens" else totals / n
            continue
        values, owners = _owners(step.values.get(source, []))
        if not values.size:
            out[key] = np.empty(0)
            continue
        result = np.full(resamples, np.nan)
        rows = max(1, CHUNK_CELLS // values.size)
        for first in range(0, resamples, rows):
            weights = counts[first:first + rows][:, owners]  # each value weighted by its request's draws
            cumulative = np.cumsum(weights, axis=1)
            totals = cumulative[:, -1:]
            position = np.argmax(cumulative >= (pct / 100.0) * np.maximum(totals, 1), axis=1)
            result[first:first + rows] = np.where(totals[:, 0] > 0, values[position], np.nan)
        out[key] = result
    return out


def point(doc_step: StepRecord, key: str) -> float | None:
    """The metric as the run's own report has it (load.json), so the numbers agree."""
    metrics = doc_step.metrics
    if key == "output_tokens_per_s":
        return metrics.output_tokens_per_s
    if key == "error_rate":
        return metrics.error_rate
    metric, _, pct = key.partition("_p")
    summary = metrics.latency(metric)
    return summary.stat(f"p{pct}") if summary is not None else None


def _interval(values: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    values = values[~np.isnan(values)] if values.size else values
    if values.size < 2:
        return None, None
    low, high = np.percentile(values, [50 * (1 - confidence), 50 * (1 + confidence)])
    return float(low), float(high)


def compare_runs(
    runs: Sequence[tuple[str, LoadReport, dict[str, StepSamples]]], *, resamples: int = 1000,
    confidence: float = 0.95, seed: int = 0,
) -> dict[str, Any]:
    """Every step of the first run against the same step of each other run: values with their
    intervals, and each change with its interval and whether it is significant."""
    rng = np.random.default_rng(seed)
    base_name, base_doc, base_steps = runs[0]
    rows, notes = [], []
    doc_steps = [{s.label: s for s in doc.steps} for _, doc, _ in runs]
    for label, base in base_steps.items():
        matched = []
        for index, (name, _doc, steps) in enumerate(runs):
            step = steps.get(label)
            if step is None and len(steps) == 1 and len(base_steps) == 1:
                step = next(iter(steps.values()))
            if step is None:
                notes.append(f"{name} has no step {label!r}: left out of that step's comparison")
                continue
            matched.append((index, name, step, doc_steps[index][step.label]))
        boots = {index: bootstrap(step, resamples, rng) for index, _, step, _ in matched}
        for key, title, _source, _pct, higher in METRICS:
            base_boot = boots[0][key]
            cells = []
            for index, name, _step, doc_step in matched:
                value = point(doc_step, key)
                low, high = _interval(boots[index][key], confidence)
                cell: dict[str, Any] = {"run": name, "value": value, "ci": [low, high]}
                base_value = point(doc_steps[0][base.label], key)
                if index > 0 and value is not None and base_value is not None:
                    diff = boots[index][key] - base_boot if base_boot.size and boots[index][key].size else np.empty(0)
                    d_low, d_high = _interval(diff, confidence)
                    change = value - base_value
                    worse = change > 0 if not higher else change < 0
                    cell.update({
                        "delta": change, "delta_pct": 100.0 * change / base_value if base_value else None,
                        "delta_ci": [d_low, d_high], "worse": worse and change != 0,
                        "significant": d_low is not None and (d_low > 0 or d_high < 0),  # type: ignore[operator]
                    })
                cells.append(cell)
            rows.append({"step": label, "metric": key, "title": title, "higher_is_better": higher, "runs": cells})
    capacities = [doc.capacity for _, doc, _ in runs]
    if all(capacities):  # --find-capacity runs: their answers too
        answers = [capacity["capacity"] for capacity in capacities if capacity]
        cells = [{"run": name, "value": value, "ci": [None, None]} for (name, _, _), value in zip(runs, answers,
                                                                                                   strict=True)]
        for cell in cells[1:]:
            if cell["value"] is not None and answers[0]:
                change = cell["value"] - answers[0]
                # one number per run, no samples to resample: shown, never judged significant
                cell.update({"delta": change, "delta_pct": 100.0 * change / answers[0], "delta_ci": [None, None],
                             "worse": change < 0, "significant": False})
        rows.append({"step": "capacity search", "metric": "capacity", "title": "capacity (users or requests/s)",
                     "higher_is_better": True, "runs": cells})
    return {"baseline": base_name, "runs": [name for name, _, _ in runs], "confidence": confidence,
            "resamples": resamples, "rows": rows, "notes": notes}


def regressions(result: Mapping[str, Any], limit_pct: float) -> list[str]:
    """Each metric worse than the baseline by more than `limit_pct` percent, and significantly. From a
    baseline of 0 (an error rate, most often) there is no percentage: any significant worsening counts."""
    found = []
    for row in result["rows"]:
        for cell in row["runs"][1:]:
            if not (cell.get("worse") and cell.get("significant")):
                continue
            pct = cell.get("delta_pct")
            base = row["runs"][0]["value"]
            if pct is None and base == 0:
                found.append(f"{cell['run']} {row['step']} {row['metric']}: {cell['value']:.4g} against 0")
            elif pct is not None and abs(pct) > limit_pct:
                found.append(f"{cell['run']} {row['step']} {row['metric']}: {pct:+.1f}% "
                             f"({cell['value']:.4g} against {base:.4g})")
    return found


def print_table(result: Mapping[str, Any]) -> None:
    """The comparison on stdout: value [interval] per run, change against the baseline."""
    width = 22
    print(f"{'step':<14}{'metric':<22}" + "".join(f"{Path(r).name[-width + 2:]:>{width}}" for r in result["runs"]))
    for row in result["rows"]:
        cells = []
        for cell in row["runs"]:
            if cell["value"] is None:
                cells.append("-")
                continue
            text = f"{cell['value']:.4g}"
            if cell.get("delta_pct") is not None:
                text += f" {cell['delta_pct']:+.1f}%{'*' if cell['significant'] else ''}"
            cells.append(text)
        print(f"{row['step']:<14}{row['metric']:<22}" + "".join(f"{c:>{width}}" for c in cells))
    print(f"* the {result['confidence']:.0%} bootstrap interval of the change leaves out zero "
          f"({result['resamples']} resamples of each run's requests)")
    for note in result["notes"]:
        print(f"note: {note}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m load compare",
        description="Compare load runs (report folders of python -m load) step by step against the first one, "
                    "with bootstrap confidence intervals from each run's requests.jsonl. Exit 0: compared; "
                    "1: a metric worse than the baseline by more than --fail-if-worse percent, significantly; "
                    "2: a run cannot be read.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="report folders; the first is the baseline")
    parser.add_argument("--fail-if-worse", type=float, default=None, metavar="PCT",
                        help="exit 1 when a metric is worse than the baseline's by more than PCT percent and the "
                             "change is significant (larger than the runs' bootstrap noise)")
    parser.add_argument("--confidence", type=float, default=0.95, help="confidence level of the intervals")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples per run and step")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    parser.add_argument("--report-dir", default="out/compare", help="where compare.json and compare.html go")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if len(args.runs) < 2:
            raise RunError("compare needs at least two runs")
        if not 0 < args.confidence < 1 or args.resamples < 10:
            raise RunError("--confidence must be in (0, 1) and --resamples >= 10")
        runs = [load_run(path) for path in args.runs]
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = compare_runs(runs, resamples=args.resamples, confidence=args.confidence, seed=args.seed)
    worse = regressions(result, args.fail_if_worse) if args.fail_if_worse is not None else []
    result["fail_if_worse_pct"], result["regressions"] = args.fail_if_worse, worse
    from reports.compare_report import write_compare_reports

    paths = write_compare_reports(result, runs, args.report_dir)
    print_table(result)
    print(f"reports: {paths['html']} {paths['json']}")
    if args.fail_if_worse is not None:
        if worse:
            print(f"worse than the baseline by more than {args.fail_if_worse:g}%: {'; '.join(worse)}", file=sys.stderr)
            return 1
    return 0
