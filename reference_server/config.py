"""The settings of one server instance (what `python -m reference_server`'s options set)."""

from __future__ import annotations

from dataclasses import dataclass, field

from reference_server.transport import DEFAULT_MAX_BODY_BYTES


@dataclass
class ServerConfig:
    """Settings of one server instance."""

    api_keys: tuple[str, ...] = ()
    auth_required: bool = True
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    body_timeout_s: float = 30.0  # the whole body must arrive within this, or 408
    max_queue: int = 64
    retry_after_s: int = 1
    extra_model_names: tuple[str, ...] = field(default_factory=tuple)
    engine_label: str = ""  # the engine's name in /metrics (chatspec:engine_info); default: its class
    # prometheus_client's multiprocess folder when several server processes share the port (--workers)
    metrics_dir: str | None = None
    # the delta/message key reasoning tokens go out under: "reasoning_content" (DeepSeek, older vLLM)
    # or "reasoning" (newer vLLM); only engines that mark tokens as reasoning (the mock) send any
    reasoning_field: str = "reasoning_content"
    record_path: str | None = None  # --record: a JSON line per chat request received (reference_server.recording)
