"""The GitHub Action (action.yml) run step by step as Actions runs it: expressions filled in from
the inputs, `bash --noprofile --norc -eo pipefail`, and GITHUB_STEP_SUMMARY, GITHUB_OUTPUT,
GITHUB_ACTION_PATH, RUNNER_TEMP set. `uses:` steps (setup-python, upload-artifact) are GitHub's
own and are checked by their settings; the install step is measured in docs/benchmarks.md."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reference_server.launcher import RunningServer, free_port, running_server

ROOT = Path(__file__).resolve().parents[1]
ACTION = yaml.safe_load((ROOT / "action.yml").read_text())
_EXPR = re.compile(r"\$\{\{\s*inputs\.([a-z-]+)\s*\}\}")


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    with running_server("--ttft-ms", "0", "--itl-ms", "0", engine="mock") as server:
        yield server


def _step(name: str) -> dict[str, Any]:
    return next(step for step in ACTION["runs"]["steps"] if step.get("name", "").startswith(name))


def run_gate(tmp_path: Path, **given: str) -> tuple[int, str, dict[str, str], Path]:
    """Run the gate step with `given` inputs; (exit status, step summary, outputs, workspace)."""
    inputs = {name: str(spec.get("default", "")) for name, spec in ACTION["inputs"].items()}
    unknown = set(given) - set(inputs)
    assert not unknown, f"not inputs of the action: {unknown}"
    inputs.update(given)
    step = _step("Conformance gate")
    env = {name: _EXPR.sub(lambda m: inputs[m.group(1)], str(value)) for name, value in step["env"].items()}
    workspace, shim = tmp_path / "workspace", tmp_path / "bin"
    workspace.mkdir(exist_ok=True)
    shim.mkdir(exist_ok=True)
    script = shim / "chatspec"  # what the install step puts on PATH: the console script
    script.write_text(f"#!/bin/sh\nexec {sys.executable} -m chatspec \"$@\"\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "step.sh").write_text(step["run"])
    summary, output = tmp_path / "summary", tmp_path / "output"
    summary.write_text("")
    output.write_text("")
    env = {**os.environ, **env, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_OUTPUT": str(output), "GITHUB_ACTION_PATH": str(ROOT),
           "RUNNER_TEMP": str(tmp_path), "GITHUB_WORKSPACE": str(workspace)}
    done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(tmp_path / "step.sh")],
                          cwd=workspace, env=env, capture_output=True, text=True, timeout=300)
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
    return done.returncode, summary.read_text(), outputs, workspace


def test_the_action_installs_the_slim_package_and_always_uploads() -> None:
    assert ACTION["runs"]["using"] == "composite"
    assert set(ACTION["inputs"]) >= {"base-url", "api-key", "header", "model", "profile", "fail-on", "baseline"}
    install = _step("Install")["run"]
    assert '"$GITHUB_ACTION_PATH"' in install and "[" not in install  # the slim package: no extra
    upload = next(s for s in ACTION["runs"]["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and upload["with"]["path"] == "${{ inputs.report-dir }}"
    assert ACTION["outputs"]["exit-code"]["value"] == "${{ steps.gate.outputs.exit-code }}"


def test_a_passing_endpoint_passes_the_job_with_a_summary(mock: RunningServer, tmp_path: Path) -> None:
    status, summary, outputs, workspace = run_gate(tmp_path, **{"base-url": mock.base_url,
                                                                "api-key": mock.api_key or "", "args": "-k usage"})
    assert status == 0, summary
    assert summary.startswith("## chatspec conformance: PASSED") and outputs["exit-code"] == "0"
    assert (workspace / "chatspec-report" / "summary.md").read_text() == summary
    assert (workspace / "chatspec-report" / "junit.xml").exists()


def test_a_new_failure_fails_the_job_with_its_repro_and_a_baseline_lets_it_pass(mock: RunningServer,
                                                                                  tmp_path: Path) -> None:
    given = {"base-url": mock.base_url + "/v1", "api-key": mock.api_key or "", "profile": "openai",
             "header": "X-Trace: 1\n\nX-Team: llm", "args": "-k 'ranges.temperature and inclusive'"}
    status, summary, outputs, workspace = run_gate(tmp_path, **given)
    assert status == 1 and outputs["exit-code"] == "1", summary
    assert "## chatspec conformance: FAILED" in summary and "### New failures (2)" in summary
    assert "`ranges.temperature.inclusive_min_end`" in summary
    assert "curl -sS" in summary and '"X-Team: $HEADER_VALUE"' in summary and "$API_KEY" in summary
    assert (mock.api_key or "unset") not in summary
    (workspace / "baseline.yaml").write_text(yaml.safe_dump({"expected_failures": [
        {"id": "ranges.temperature.inclusive_min_end", "reason": "documented bounds"},
        {"id": "ranges.temperature.inclusive_max_end", "reason": "documented bounds"},
        {"id": "ranges.temperature.above_max", "reason": "was broken"}]}))
    status, summary, outputs, _ = run_gate(tmp_path, **{**given, "baseline": "baseline.yaml",
                                                        "args": "-k ranges.temperature"})
    assert status == 0, summary
    assert "### Expected by the baseline `baseline.yaml` (2)" in summary and "documented bounds" in summary
    assert "### Fixed: expected to fail, now pass (1)" in summary and "ranges.temperature.above_max" in summary


def test_an_unreachable_endpoint_says_it_could_not_run(tmp_path: Path) -> None:
    status, summary, outputs, _ = run_gate(tmp_path, **{"base-url": f"http://127.0.0.1:{free_port()}",
                                                        "model": "m"})
    assert status == 2 and outputs["exit-code"] == "2"
    assert "could not run (exit 2)" in summary
