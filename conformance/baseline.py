"""Baselines: the failures an endpoint is known to have, each with its reason, so that CI fails
only on a new one.

A baseline is a previous run's conformance.json (every check that failed there is expected) or a
short YAML file:

    expected_failures:
      - id: errors.status_400
        reason: FastAPI answers validation errors with 422

Applied to a run, each failure is marked "expected" or "new", and expected ones that now pass
are listed as fixed; `write` records a run as a YAML baseline, keeping the reasons already given.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import yaml

from reports.model import RunReport

HEADER = ("# chatspec baseline: the failures this endpoint is known to have, each with why.\n"
          "# chatspec check --baseline FILE exits 0 while every failure is listed here, 1 on a new one;\n"
          "# --update-baseline rewrites it from the latest run (reasons kept).\n")


class BaselineError(ValueError):
    """The baseline file cannot be used: the one-line reason."""


@dataclass(frozen=True)
class Baseline:
    """Expected failures: check id -> reason, and where they came from."""

    path: str
    expected: dict[str, str]


def load(path: Path | str) -> Baseline:
    """Read a YAML baseline or a conformance.json (BaselineError naming what is wrong)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML is a superset of JSON
    except OSError as exc:
        raise BaselineError(f"cannot read the baseline {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise BaselineError(f"the baseline {path} is neither YAML nor JSON: {exc}".splitlines()[0]) from None
    if isinstance(data, dict) and isinstance(data.get("checks"), list):  # a conformance.json
        when = data.get("started_at", "?")
        expected = {item["id"]: f"failed in the baseline run of {when}: {item.get('message', '')}".strip()
                    for item in data["checks"]
                    if isinstance(item, dict) and item.get("outcome") in ("failed", "error") and "id" in item}
        return Baseline(str(path), expected)
    if data is None or data == {}:
        return Baseline(str(path), {})
    items = data.get("expected_failures") if isinstance(data, dict) else None
    if items is None and isinstance(data, dict) and "expected_failures" in data:
        items = []  # "expected_failures:" with nothing under it
    if not isinstance(items, list):
        raise BaselineError(f"the baseline {path} must hold 'expected_failures:', a list of {{id, reason}} "
                            "(or be a conformance.json)")
    expected: dict[str, str] = {}
    for number, item in enumerate(items, 1):
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise BaselineError(f"the baseline {path}: expected_failures item {number} has no 'id'")
        reason = item.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise BaselineError(f"the baseline {path}: {item['id']} has no 'reason' (say why it is expected)")
        expected[item["id"]] = reason.strip()
    return Baseline(str(path), expected)


def apply(report: RunReport, baseline: Baseline) -> None:
    """Mark each failure of `report` expected or new, and list the expected ones that passed as fixed."""
    report.baseline = baseline.path
    for result in report.results:
        if result.broken:
            reason = baseline.expected.get(result.id)
            result.baseline = "new" if reason is None else "expected"
            result.baseline_reason = reason
    report.fixed = [r.id for r in report.results if r.outcome == "passed" and r.id in baseline.expected]


def write(path: Path | str, report: RunReport, previous: Baseline | None = None) -> Path:
    """Write `report`'s failures as a YAML baseline at `path`; reasons already in `previous` are kept,
    a new entry's reason is the failure's message (edit it to say why)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        raise BaselineError(f"--update-baseline writes YAML; name a .yaml file, not {path}")
    known = previous.expected if previous else {}
    today = dt.date.today().isoformat()
    entries = [{"id": r.id, "reason": known.get(r.id) or f"recorded {today} ({r.severity}): {r.message}"[:300]}
               for r in report.results if r.broken]
    text = HEADER + yaml.safe_dump({"expected_failures": entries}, sort_keys=False, allow_unicode=True, width=100)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
