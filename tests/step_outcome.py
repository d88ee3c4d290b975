"""The load runner's StepOutcome, for tests that cannot import load.runner.

load.runner imports Locust, which monkey-patches the interpreter for gevent as it is imported;
inside pytest that comes after ssl and urllib3 are loaded, and collection dies (RecursionError in
ssl.SSLContext). So the class is copied here, field for field, and
tests/test_load_analysis.py::test_the_step_outcome_copy_is_the_runners compares the two in a
subprocess. Once StepOutcome lives in a module that imports no Locust, this file is that import.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from load.config import StepSpec
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


def fields_of(cls: type) -> list[list[str]]:
    """A dataclass's fields as [name, annotation, default] (a factory's default as what it makes)."""
    out = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "required"
        out.append([f.name, str(f.type), default])
    return out
