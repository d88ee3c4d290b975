"""Which optional install an engine needs, asked before anything heavy is imported.

Why: the slim `pip install chatspec` carries no model engine; asking for the llamacpp engine
there must end in one line that names the extra to install, not an ImportError traceback from
a child process.
"""

from __future__ import annotations

import importlib.util

from reference_server.engines.registry import ENGINES


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_engine_extra(engine: str) -> str | None:
    """None when `engine` can be imported here; else a one-line reason naming the extra to install.

    The mock needs nothing; exllamav2 names its [gpu] extra itself (it needs CUDA too)."""
    extra = ENGINES[engine].extra
    if extra is None:
        return None
    missing = [module for module in extra.modules if not _installed(module)]
    if not missing:
        return None
    return (f"{extra.what} is not installed (no module {', '.join(missing)}): "
            f"{extra.install}, or use the mock engine, which needs no model")
