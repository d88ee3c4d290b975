"""Workloads: what a load run sends. Each is a small object a Locust user holds a session of.

`from_wire` rebuilds one from the dict the master sends to its workers (LoadConfig.workload).
"""

from __future__ import annotations

from typing import Any

from load.workloads.base import PlannedRequest, Session, Workload, request_body
from load.workloads.dataset import DatasetWorkload
from load.workloads.multi_turn import MultiTurnWorkload
from load.workloads.shared_prefix import SharedPrefixWorkload
from load.workloads.sharegpt import ShareGPTWorkload
from load.workloads.synthetic import SyntheticWorkload
from load.workloads.tools import ToolsWorkload
from load.workloads.trace import TraceWorkload

WORKLOAD_TYPES: dict[str, Any] = {cls.kind: cls for cls in (
    SyntheticWorkload, DatasetWorkload, ShareGPTWorkload, SharedPrefixWorkload, MultiTurnWorkload, TraceWorkload,
    ToolsWorkload)}

__all__ = ["PlannedRequest", "Session", "Workload", "from_wire", "request_body", "WORKLOAD_TYPES"]


def from_wire(data: dict[str, Any]) -> Workload:
    """The workload a LoadConfig carries."""
    return WORKLOAD_TYPES[data["kind"]].from_wire(data)
