"""An environment in which a child pytest loads the chatspec plugin the way an installed chatspec
makes it: through the `pytest11` entry point that pyproject.toml declares (a dist-info folder
written from that table, on PYTHONPATH), whether or not this checkout is installed."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def plugin_env(where: Path) -> dict[str, str]:
    """os.environ plus a PYTHONPATH holding the checkout and a dist-info with pyproject's pytest11 entry points."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    points = project.get("entry-points", {}).get("pytest11", {})
    info = where / "entry-points" / "chatspec_checkout-0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: chatspec-checkout\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[pytest11]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()))
    path = [str(info.parent), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
