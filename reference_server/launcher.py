"""Start a reference server as a child process on loopback and stop it: for tests, the
conformance suite's embedded mode and benchmarks."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from spec.endpoint import DEFAULT_ROOT


def signal_name(returncode: int) -> str:
    """'signal 11 (SIGSEGV)' for a process that died by a signal (negative return code)."""
    number = -returncode
    try:
        return f"signal {number} ({signal.Signals(number).name})"
    except ValueError:
        return f"signal {number}"


def describe_exit(returncode: int) -> str:
    """How a child process ended, in words: 'exit code 2' or 'signal 11 (SIGSEGV)'."""
    return signal_name(returncode) if returncode < 0 else f"exit code {returncode}"


@dataclass(frozen=True)
class RunningServer:
    """Where a launched server listens and how to talk to it."""

    base_url: str
    api_key: str | None
    model: str
    process: subprocess.Popen[bytes]

    @property
    def api_base(self) -> str:
        """The base URL an OpenAI SDK client takes (`.../v3/openai`)."""
        return self.base_url + DEFAULT_ROOT

    def exit_status(self) -> str | None:
        """None while the server runs; once it has ended, how: 'exit code 1', 'signal 11 (SIGSEGV)'."""
        code = self.process.poll()
        return None if code is None else describe_exit(code)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(base_url: str, process: subprocess.Popen[bytes], log_path: str, timeout_s: float) -> dict[str, Any]:
    """The server's first 200 answer on /health (which names the model it serves), once it comes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            with open(log_path, encoding="utf-8", errors="replace") as fh:
                tail = fh.read()[-4000:]
            lines = [line for line in tail.splitlines() if line.strip()]
            why = f"reference server ended before it was ready ({describe_exit(process.returncode)})"
            if lines and lines[-1].startswith("error: "):  # the server's own one-line reason
                raise RuntimeError(f"{why}: {lines[-1].removeprefix('error: ')}")
            raise RuntimeError(f"{why}:\n{tail}")
        try:
            with urllib.request.urlopen(base_url + "/health", timeout=2) as response:
                if response.status == 200:
                    return json.load(response)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"reference server at {base_url} not healthy after {timeout_s:.0f} s")


@contextlib.contextmanager
def running_server(
    *args: str,
    engine: str = "llamacpp",
    api_key: str | None = "auto",
    model: str | None = None,
    startup_timeout_s: float = 180.0,
    extra_env: dict[str, str] | None = None,
) -> Iterator[RunningServer]:
    """Run `python -m reference_server` on a free loopback port until the block ends.

    `api_key="auto"` makes a random key; `None` starts the server with `--no-auth`.
    """
    port = free_port()
    # hex: a key that begins with "-" would read as an option to every CLI a test hands it to
    key = secrets.token_hex(16) if api_key == "auto" else api_key
    command: list[str] = [sys.executable, "-m", "reference_server", "--host", "127.0.0.1",
                          "--port", str(port), "--engine", engine]
    command += [f"--api-key={key}"] if key else ["--no-auth"]
    if model:
        command += ["--model-name", model]
    command += list(args)
    env = {**os.environ, **(extra_env or {})}
    with tempfile.NamedTemporaryFile(prefix="reference-server-", suffix=".log", delete=False) as log:
        log_path = log.name
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        health = _wait_healthy(base_url, process, log_path, startup_timeout_s)
        # Asked, not guessed: /health names the engine's model (the first GET {root}/models lists) and,
        # unlike /models, is not counted in the server's responses (chatspec:http_responses_total).
        served = model or health["model"]
        yield RunningServer(base_url=base_url, api_key=key, model=served, process=process)
    finally:
        _stop(process)
        with contextlib.suppress(OSError):
            os.unlink(log_path)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)

