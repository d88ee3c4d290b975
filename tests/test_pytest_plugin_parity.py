"""The pytest plugin takes the CLI's target options, from the one definition in
conformance/options.py: the base-URL rule, --header, the key from the environment, the model
from {root}/models."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from plugin_env import plugin_env

from conformance.cli import build_parser
from reference_server.launcher import RunningServer, running_server

CLI_ONLY = {"--embedded-server", "--report-dir", "-k", "--strict", "--list", "--quiet", "-h", "--help",
            "--update-baseline"}


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    with running_server("--ttft-ms", "0", "--itl-ms", "0", engine="mock") as server:
        yield server


def _pytest(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path, env={**plugin_env(tmp_path), **(env or {})})


def test_every_cli_target_option_is_a_plugin_option(tmp_path: Path) -> None:
    cli = {flag for action in build_parser()._actions for flag in action.option_strings} - CLI_ONLY
    out = _pytest(tmp_path, "--help")
    assert out.returncode == 0, out.stderr
    plugin = set(re.findall(r"--chatspec-[a-z-]+", out.stdout))
    assert {"--base-url", "--header", "--model", "--api-key", "--profile", "--fail-on"} <= cli
    assert {f"--chatspec-{flag[2:]}" for flag in cli} == plugin


def test_plugin_finds_the_model_and_takes_key_and_header_as_the_cli_does(mock: RunningServer, tmp_path: Path) -> None:
    out = _pytest(tmp_path, "--chatspec-base-url", mock.base_url + "/v1", "--chatspec-header", "X-Trace: 1",
                  "-k", "usage", "-q", env={"CHATSPEC_API_KEY": mock.api_key or ""})
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"\b[1-9]\d* passed", out.stdout), out.stdout


def test_plugin_usage_errors_name_its_own_options(mock: RunningServer, tmp_path: Path) -> None:
    out = _pytest(tmp_path, "--chatspec-base-url", mock.base_url, "--chatspec-header", "no colon", "-q")
    assert out.returncode == 4 and "--chatspec-header must look like 'Name: value'" in out.stderr, out.stderr
    gone = _pytest(tmp_path, "--chatspec-base-url", "ftp://x", "-q")
    assert gone.returncode == 4 and "--chatspec-base-url must be an http(s) URL" in gone.stderr, gone.stderr


def test_without_a_base_url_the_plugin_adds_no_test(tmp_path: Path) -> None:
    (tmp_path / "test_one.py").write_text("def test_one():\n    pass\n")
    out = _pytest(tmp_path, "-q")
    assert out.returncode == 0 and "1 passed" in out.stdout, out.stdout + out.stderr
