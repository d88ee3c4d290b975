"""The version a load worker and its master must share, and the number of their message protocol.

A worker of another chatspec release may plan prompts, split counts or encode records differently,
so a run would mix two tools' numbers; the master refuses such a worker instead. The version is the
installed package's (pyproject's `version`); PROTOCOL changes whenever the chatspec_* messages do.
"""

from __future__ import annotations

import importlib.metadata

PROTOCOL = 2  # 1: records at the end only, `--workers` on the worker's command line; 2: this


def _installed() -> str:
    try:
        return importlib.metadata.version("chatspec")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


VERSION = _installed()


def mismatch(version: str, protocol: int) -> str | None:
    """Why a worker of this version and protocol cannot join this master, or None when it can."""
    if version == VERSION and protocol == PROTOCOL:
        return None
    return (f"the worker runs chatspec {version} (protocol {protocol}) and the master chatspec {VERSION} "
            f"(protocol {PROTOCOL}): run the same chatspec release on the master and every worker")
