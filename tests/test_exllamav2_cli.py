"""`--engine exllamav2` where it cannot run: one plain line, exit 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cuda_available


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reference_server", "--engine", "exllamav2", "--no-auth",
                           "--port", "0", *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.skipif(cuda_available(), reason="this machine has a GPU")
def test_without_a_gpu_the_server_says_so(tmp_path: Path) -> None:
    done = _serve("--model", str(tmp_path))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith("error: cannot start the exllamav2 engine:") and "GPU" in lines[0]


def test_torch_without_cuda_is_named(tmp_path: Path) -> None:
    fake = tmp_path / "site" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "__version__ = '2.13.0+cpu'\nclass cuda:\n    @staticmethod\n    def is_available():\n        return False\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])}
    done = _serve("--model", str(tmp_path), env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "needs a CUDA GPU, and PyTorch 2.13.0+cpu sees none here" in done.stderr


def test_model_is_required() -> None:
    done = _serve()
    assert done.returncode == 2 and "--model DIR" in done.stderr
