"""The settings of a load run and of each of its steps, as plain data that travels to workers."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

API_PATH = "/v3/openai/chat/completions"


MAX_RETRY_AFTER_S = 5.0  # the longest wait after a 429 a user honours


@dataclass
class LoadConfig:
    """What every request looks like; the same in the master and every worker."""

    base_url: str  # scheme://host:port; `path` is the whole chat path on it
    model: str
    api_key: str | None = None
    stream: bool = True
    path: str = API_PATH
    # What is sent: a workload's wire form (load.workloads.from_wire); default 32-word prompts, 64 tokens.
    workload: dict[str, Any] = field(default_factory=lambda: {
        "kind": "synthetic", "words": 32, "prompt_tokens": None, "scale": None,
        "output_tokens": {"kind": "fixed", "params": [64], "values": []}})
    extra_body: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 120.0
    seed: int = 0
    gamma_shape: float = 0.5
    # Closed loop: after a 429, a user waits the Retry-After the server asked for (at most
    # MAX_RETRY_AFTER_S) before its next request, as a real client does, instead of hammering.
    honor_retry_after: bool = True
    headers: dict[str, str] = field(default_factory=dict)  # --header: sent with every request

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> LoadConfig:
        return cls(**data)


@dataclass
class StepSpec:
    """One step of a run: a concurrency (closed loop) or an arrival rate (open loop).

    In open loop, `users` is the pool of users that may have requests in flight at once; a
    request whose turn comes while every user is busy is sent late, and the lag is reported.
    """

    index: int
    users: int
    duration_s: float
    warmup_s: float
    rate: float | None = None
    arrival: str = "poisson"
    max_requests: int | None = None
    name: str | None = None  # a label of its own (a trace replay is neither a rate nor a concurrency)
    schedule_rate: float | None = None  # the rate a workload's own schedule asks (a trace: rows over its span)

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return f"rate {self.rate:g}/s" if self.rate is not None else f"{self.users} users"

    @property
    def level(self) -> float:
        """The swept quantity: requests/s in open loop, users in closed loop."""
        return self.rate if self.rate is not None else float(self.users)

    def to_wire(self) -> dict[str, Any]:
        """Plain data; an unbounded duration (a step bounded by its count) is None, as JSON has no inf."""
        data = asdict(self)
        data["duration_s"] = self.duration_s if math.isfinite(self.duration_s) else None
        return data

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> StepSpec:
        return cls(**{**data, "duration_s": math.inf if data["duration_s"] is None else data["duration_s"]})


@dataclass(frozen=True)
class MasterOptions:
    """`--master`: wait on this address for workers started elsewhere (`python -m load.worker`)."""

    bind_host: str = "*"  # every interface, as Locust's own --master-bind-host
    bind_port: int = 5557  # Locust's own default
    max_wait_s: float = 0.0  # how long to wait for every worker to connect; 0: no limit


def share(total: int, parts: int, index: int) -> int:
    """Worker `index`'s share of `total` when split as evenly as integers allow."""
    return total // parts + (1 if index < total % parts else 0)
