"""`--workers N`: N server processes on one port (SO_REUSEPORT), so the mock engine is not capped
by one Python process when a load client's own capacity is measured.

The parent only supervises: it starts N copies of its own command line with `--worker-process`,
waits until each listens, prints the one "serving" line, and on SIGTERM/SIGINT stops them all.
The kernel spreads new connections over the processes. Each process has its own engine (the mock's
`--mock-slots` are per process) and /health is that one process's; /metrics sums all of them
through prometheus_client's multiprocess files in a folder the parent owns.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from types import FrameType

from reference_server.launcher import describe_exit, free_port

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it when it is imported
READY_LINE = "chatspec-worker-ready"


def _wait_ready(processes: list[subprocess.Popen[str]], timeout_s: float) -> str | None:
    """None once every process has printed READY_LINE; else why not (one line)."""
    selector = selectors.DefaultSelector()
    for index, process in enumerate(processes):
        assert process.stdout is not None
        selector.register(process.stdout, selectors.EVENT_READ, index)
    waiting = set(range(len(processes)))
    deadline = time.monotonic() + timeout_s
    while waiting:
        for index in list(waiting):
            if processes[index].poll() is not None:
                return f"server worker {index} ended before it was ready ({describe_exit(processes[index].returncode)})"
        if time.monotonic() > deadline:
            return f"server workers not ready after {timeout_s:.0f} s"
        for key, _ in selector.select(timeout=0.2):
            line = key.fileobj.readline()  # type: ignore[union-attr]
            if line.strip() == READY_LINE:
                waiting.discard(key.data)
                selector.unregister(key.fileobj)
    selector.close()
    return None


def serve_workers(argv: list[str], workers: int, host: str, port: int, startup_timeout_s: float) -> int:
    """Run `workers` server processes from `argv` (this server's own arguments) until told to stop.

    Exit 0 after SIGTERM/SIGINT; 2 when a worker cannot start; 1 when one dies while serving.
    """
    port = port or free_port()
    metrics_dir = tempfile.mkdtemp(prefix="chatspec-metrics-")
    env = {**os.environ, METRICS_DIR_ENV: metrics_dir}
    command = [sys.executable, "-m", "reference_server", *argv, "--worker-process", "--port", str(port)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) for _ in range(workers)]
    stop = {"signal": False}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop["signal"] = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        why = _wait_ready(processes, startup_timeout_s)
        if why is not None:
            print(f"error: {why}", file=sys.stderr, flush=True)
            return 2
        print(f"serving on http://{host}:{port} with {workers} worker processes", flush=True)
        while not stop["signal"]:
            dead = [(i, p.returncode) for i, p in enumerate(processes) if p.poll() is not None]
            if dead:
                index, code = dead[0]
                print(f"error: server worker {index} exited ({describe_exit(code)}); stopping the others",
                      file=sys.stderr, flush=True)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            with contextlib.suppress(OSError, ValueError):
                if process.stdout is not None:
                    process.stdout.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)
