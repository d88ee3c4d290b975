"""The error an engine raises when it cannot run on this machine at all."""

from __future__ import annotations


class EngineUnavailableError(RuntimeError):
    """No GPU, or a package the engine needs is missing: the server says so in one line and exits non-zero."""
