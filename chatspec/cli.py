"""`chatspec check | load | serve | compare ...`: one command in the shape of `st run`, `locust`,
`vllm bench serve`.

Each subcommand hands its arguments, untouched, to the module that has always owned them
(`python -m conformance`, `python -m load`, `python -m reference_server`, `python -m load compare`),
so the options cannot differ between the two spellings. Nothing is imported before the
subcommand is known: `chatspec --help` and `chatspec check` do not pay for Locust or llama.cpp.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module whose main(argv) runs it, the argv prefix it takes, what it does)
COMMANDS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "check": ("conformance.cli", (), "check an endpoint against the spec; the exit code gates CI"),
    "load": ("load.cli", (), "load-test an endpoint: latencies, sweeps, capacity search"),
    "serve": ("reference_server.__main__", (), "run the reference server (llamacpp needs chatspec[cpu])"),
    "compare": ("load.cli", ("compare",), "compare load reports with bootstrap intervals"),
}


def usage() -> str:
    """The top-level help text."""
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {what}" for name, (_, _, what) in COMMANDS.items())
    return (f"usage: chatspec {{{','.join(COMMANDS)}}} [options]\n\n"
            "Spec-driven conformance and load testing for chat-completions APIs.\n\n"
            f"commands:\n{rows}\n\n"
            "chatspec COMMAND --help lists a command's options.")


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand named by argv[0]; 2 with the usage on a missing or unknown one."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"{usage()}\n\nchatspec: error: unknown command {name!r}", file=sys.stderr)
        return 2
    module_name, prefix, _ = COMMANDS[name]
    module = importlib.import_module(module_name)
    return int(module.main([*prefix, *rest]) or 0)
