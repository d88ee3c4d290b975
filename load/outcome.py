"""What one finished step hands over: its spec, raw records, client health, metrics and verdicts.

Its own module, free of Locust and gevent, so the report, the capacity search and tests can make
and read real outcomes without the runner's monkey-patching.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from load.config import StepSpec
from load.fidelity import StepFidelity
from load.metrics import Window
from load.records import RequestRecord


@dataclass
class StepOutcome:
    """One finished step: its spec, raw records, client health and computed metrics."""

    spec: StepSpec
    records: list[RequestRecord]
    health: list[dict[str, Any]]
    window: Window
    metrics: dict[str, Any] = field(default_factory=dict)
    slo: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    aborted: str | None = None  # why the step (and the run) ended early: the endpoint gone, or Ctrl-C
    interrupted: bool = False  # ended by Ctrl-C (SIGINT): the report is partial
    started_at: float = 0.0  # time.monotonic() when the step began (scraped server metrics align to it)
    stopped_early: str | None = None  # why `early_stop` ended the step before its duration (saturated)
    fidelity: StepFidelity | None = None  # asked vs scheduled vs sent vs done, why the step ended, the verdict
