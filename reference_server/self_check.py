"""The engine's start-up check: one short generation before the server says it is ready.

An engine that cannot generate (a llama.cpp build for another CPU, a broken model file, a
missing GPU kernel) should stop the server at start with one line saying why, not crash on a
user's first request. A native crash cannot be caught inside the process it kills, so the
default is to run the check first in a child process (the same command with
`--self-check-only`) and read how the child ended; then once more in the server's own engine,
which also warms it up.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading

from reference_server.engines.base import Engine, SamplingParams
from reference_server.generation import complete_choice
from reference_server.launcher import signal_name

PROMPT = [{"role": "user", "content": "Say hello."}]
MAX_TOKENS = 4
# Signals a CPU-specific build dies with: SIGILL (an instruction this CPU lacks), SIGSEGV/SIGBUS
# (e.g. AMX tile instructions the kernel does not allow the process to use).
_BUILD_SIGNALS = {signal.SIGILL, signal.SIGSEGV, signal.SIGBUS}


class SelfCheckFailed(Exception):
    """The engine failed its start-up generation; the message is the one-line reason."""


async def _generate(engine: Engine) -> str:
    prompt = engine.tokenize_chat(PROMPT)
    params = SamplingParams(max_tokens=MAX_TOKENS, top_k=1, seed=0)  # greedy: the same every time
    choice = await complete_choice(engine, prompt, params, [], 0, threading.Event())
    if choice.completion_tokens == 0 and choice.finish_reason != "stop":
        raise SelfCheckFailed("the engine returned no token and no end of sequence")
    return f"{len(prompt)} prompt tokens -> {choice.completion_tokens} tokens {choice.text!r}"


def check_in_process(engine: Engine, timeout_s: float) -> str:
    """One short generation through everything above tokens; a summary line, or SelfCheckFailed."""

    async def bounded() -> str:
        return await asyncio.wait_for(_generate(engine), timeout_s)

    try:
        return asyncio.run(bounded())
    except SelfCheckFailed:
        raise
    except TimeoutError:
        raise SelfCheckFailed(f"no answer to a {MAX_TOKENS}-token generation within {timeout_s:g} s") from None
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SelfCheckFailed(f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__) from exc


def check_in_child(server_argv: list[str], engine_name: str, timeout_s: float, crash_hint: str = "") -> str:
    """Run `python -m reference_server SERVER_ARGV --self-check-only` and read how it ended.

    Returns the child's summary line. Raises SelfCheckFailed with a whole sentence: the child's own
    last line when it exited with a reason, or what killed it. The child's whole output stays in a
    log file whose path the reason names.
    """
    command = [sys.executable, "-m", "reference_server", *server_argv, "--self-check-only"]
    with tempfile.NamedTemporaryFile("w+", prefix="reference-server-self-check-", suffix=".log",
                                     delete=False, encoding="utf-8", errors="replace") as log:
        env = {**os.environ, "PYTHONFAULTHANDLER": "1"}  # a crash leaves its Python stack in the log
        try:
            result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout_s,
                                    check=False)
        except subprocess.TimeoutExpired:
            raise SelfCheckFailed(f"the {engine_name} engine gave no answer to its start-up check within "
                                  f"{timeout_s:g} s (log: {log.name})") from None
        log.seek(0)
        lines = [line.strip() for line in log.read().splitlines() if line.strip()]
    if result.returncode == 0:
        os.unlink(log.name)
        return lines[-1] if lines else "passed"
    if result.returncode < 0:
        hint = f"; {crash_hint}" if crash_hint and -result.returncode in _BUILD_SIGNALS else ""
        raise SelfCheckFailed(f"the {engine_name} engine crashed with {signal_name(result.returncode)} during its "
                              f"start-up check (one short generation in a child process){hint} (log: {log.name})")
    reason = lines[-1].removeprefix("error: ") if lines else f"the check exited with code {result.returncode}"
    raise SelfCheckFailed(f"{reason} (log: {log.name})")
