"""The report data model shared by the conformance suite and the load tests."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

OUTCOMES = ("passed", "failed", "error", "not_supported", "skipped")  # also the report column order
SEVERITIES = ("must", "should")  # RFC 2119 levels of the checks, strictest first


@dataclass
class CheckResult:
    """How one check ended. `not_supported` means the endpoint declared the feature absent:
    it is reported as such and never counted as passed."""

    id: str
    feature: str
    category: str
    outcome: str
    duration_s: float
    message: str = ""
    request: dict[str, Any] | None = None
    response_excerpt: str | None = None
    curl: str | None = None
    spec_note: str | None = None
    severity: str = "must"
    # For a failure, against a baseline (--baseline): "expected" (listed there, with its reason)
    # or "new"; None when no baseline was applied (then every failure is new).
    baseline: str | None = None
    baseline_reason: str | None = None
    # For a failure: the deviation behind it, named the same by every check it fails (None: its own).
    cause: str | None = None

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}; expected one of {OUTCOMES}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}; expected one of {SEVERITIES}")

    @property
    def broken(self) -> bool:
        """Whether the check failed or could not be run to its end."""
        return self.outcome in ("failed", "error")


@dataclass
class RunReport:
    """A whole run: what was tested, when, and every result."""

    title: str
    target: dict[str, Any]
    started_at: str
    duration_s: float
    results: list[CheckResult] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)
    # Set when the run stopped before its last check (the endpoint stopped answering): why, and
    # the checks that never ran. An aborted run is never a pass.
    aborted: str | None = None
    not_run: list[str] = field(default_factory=list)
    # The least severity whose failures fail the run: "must" (default) or "should" (strict).
    fail_on: str = "must"
    # The baseline file applied (--baseline), and the checks it expected to fail that passed.
    baseline: str | None = None
    fixed: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Results per outcome (every outcome present, zero when none)."""
        seen = Counter(result.outcome for result in self.results)
        return {outcome: seen.get(outcome, 0) for outcome in OUTCOMES}

    def by_feature(self) -> dict[str, dict[str, int]]:
        """Results per feature and outcome, features in first-seen order."""
        table: dict[str, dict[str, int]] = {}
        for result in self.results:
            row = table.setdefault(result.feature, dict.fromkeys(OUTCOMES, 0))
            row[result.outcome] += 1
        return table

    def by_severity(self) -> dict[str, dict[str, int]]:
        """Results per severity and outcome (both severities present)."""
        table = {severity: dict.fromkeys(OUTCOMES, 0) for severity in SEVERITIES}
        for result in self.results:
            table[result.severity][result.outcome] += 1
        return table

    def gating(self, result: CheckResult) -> bool:
        """Whether `result`'s severity is one whose failures fail this run."""
        return SEVERITIES.index(result.severity) <= SEVERITIES.index(self.fail_on)

    def failed(self) -> bool:
        """Whether a check of a gating severity failed (and the baseline did not expect it) or could
        not be run, or the run was cut short."""
        return self.aborted is not None or bool(self.new_failures())

    def new_failures(self) -> list[CheckResult]:
        """The failures that fail the run: of a gating severity and not expected by the baseline."""
        return [r for r in self.results if r.broken and self.gating(r) and r.baseline != "expected"]

    def expected(self) -> list[CheckResult]:
        """The failures the baseline expected (they do not fail the run)."""
        return [result for result in self.results if result.broken and result.baseline == "expected"]

    def shared_causes(self) -> dict[str, list[str]]:
        """Causes behind two or more failures: cause -> the ids of the checks it failed."""
        groups: dict[str, list[str]] = {}
        for result in self.results:
            if result.broken and result.cause:
                groups.setdefault(result.cause, []).append(result.id)
        return {cause: ids for cause, ids in groups.items() if len(ids) > 1}

    def tolerated(self) -> list[CheckResult]:
        """The failures that do not fail the run by their severity (should-level ones, unless it
        fails on should), expected ones left out."""
        return [r for r in self.results if r.broken and not self.gating(r) and r.baseline != "expected"]

    def verdict(self) -> str:
        """PASSED, FAILED, or ABORTED when the run stopped before its last check."""
        if self.aborted is not None:
            return "ABORTED"
        return "FAILED" if self.failed() else "PASSED"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready when requests are), for storing a run and reloading it later."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunReport:
        """The inverse of `to_dict()`; outcomes are validated again."""
        results = [CheckResult(**item) for item in data.get("results", [])]
        return cls(title=data["title"], target=data["target"], started_at=data["started_at"],
                   duration_s=data["duration_s"], results=results, notes=list(data.get("notes", [])),
                   aborted=data.get("aborted"), not_run=list(data.get("not_run", [])),
                   fail_on=data.get("fail_on", "must"), baseline=data.get("baseline"),
                   fixed=list(data.get("fixed", [])))
