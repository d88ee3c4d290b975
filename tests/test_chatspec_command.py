"""The `chatspec` command: the console script pyproject declares, dispatching to each tool's own
main() with the same options, importing nothing heavy before the subcommand is known."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from reference_server.launcher import running_server

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, module: str = "chatspec", cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def test_the_console_script_is_declared_and_runs() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module_name, _, attr = scripts["chatspec"].partition(":")
    main = getattr(importlib.import_module(module_name), attr)
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "--help"])
    assert exit_info.value.code == 0


@pytest.mark.parametrize("command, module, prefix", [
    ("check", "conformance", []), ("load", "load", []), ("serve", "reference_server", []),
    ("compare", "load", ["compare"]),
])
def test_each_subcommand_has_its_module_s_options(command: str, module: str, prefix: list[str]) -> None:
    ours, theirs = _run(command, "--help"), _run(*prefix, "--help", module=module)
    assert ours.returncode == theirs.returncode == 0, ours.stderr
    assert ours.stdout == theirs.stdout


def test_nothing_heavy_is_imported_before_the_subcommand() -> None:
    code = ("import sys, chatspec.cli as c; c.main(['--help']); "
            "print(sorted(m for m in ('conformance', 'load', 'reference_server', 'locust', 'schemathesis', "
            "'llama_cpp', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert "check" in out.stdout and "compare" in out.stdout


def test_unknown_or_missing_command_is_a_usage_error() -> None:
    for args in ([], ["gate"]):
        out = _run(*args)
        assert out.returncode == 2 and "usage: chatspec" in out.stderr


def test_check_gates_an_endpoint_like_python_m_conformance(tmp_path: Path) -> None:
    with running_server("--ttft-ms", "0", "--itl-ms", "0", engine="mock") as server:
        out = _run("check", "--base-url", server.base_url, "--api-key", server.api_key or "",
                   "-k", "usage", "--report-dir", str(tmp_path), "--quiet")
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "conformance.json").read_text())["verdict"] == "passed"
