"""The portable llama-cpp-python build: profiles, a cache keyed by the flags, pip never building the
sdist itself, and (on the installed library) no AVX-512 or AMX instruction anywhere."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from reference_server import llama_build as lb

ROOT = Path(__file__).resolve().parent.parent
V3 = frozenset({"fpu", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"})


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(lb.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(lb.FLAGS_ENV, raising=False)
    return tmp_path / "cache"


def test_profile_follows_the_cpu_never_its_extras() -> None:
    assert lb.choose_profile("x86_64", V3) == "x86-64-v3"
    assert lb.choose_profile("x86_64", V3 | {"avx512f", "amx_tile", "amx_int8"}) == "x86-64-v3"
    assert lb.choose_profile("x86_64", V3 - {"avx2"}) == "x86-64-v2"
    assert lb.choose_profile("aarch64", frozenset()) == "generic"


@pytest.mark.parametrize("profile", ["x86-64-v3", "x86-64-v2"])
def test_x86_profiles_turn_native_avx512_and_amx_off(profile: str) -> None:
    args = lb.cmake_args(profile).split()
    assert "-DGGML_NATIVE=OFF" in args
    switched_on = {a.removeprefix("-D").split("=")[0] for a in args if a.endswith("=ON")}
    assert not {name for name in switched_on if "AVX512" in name or "AMX" in name}
    for name in ("AVX512", "AMX_TILE", "AMX_INT8"):
        assert f"-DGGML_{name}=OFF" in args


def test_cpu_flags_reads_proc_cpuinfo_format(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx avx2 amx_tile\n\nprocessor\t: 1\n")
    assert lb.cpu_flags(info) == frozenset({"fpu", "avx", "avx2", "amx_tile"})
    assert lb.cpu_flags(tmp_path / "missing") == frozenset()


def test_the_pin_comes_from_pyproject() -> None:
    pin = re.search(r'"llama-cpp-python==([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert lb.pinned_version() == pin == importlib.metadata.version("llama-cpp-python")


def test_wheel_folder_is_keyed_by_the_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    v3 = lb.wheel_folder("0.3.36", "x86-64-v3", lb.cmake_args("x86-64-v3"), "x86_64")
    assert v3 == lb.wheel_folder("0.3.36", "x86-64-v3", lb.cmake_args("x86-64-v3"), "x86_64")
    assert v3 != lb.wheel_folder("0.3.36", "x86-64-v2", lb.cmake_args("x86-64-v2"), "x86_64")
    assert v3 != lb.wheel_folder("0.3.37", "x86-64-v3", lb.cmake_args("x86-64-v3"), "x86_64")
    assert "x86-64-v3" in v3.name
    monkeypatch.setenv(lb.FLAGS_ENV, "-DGGML_NATIVE=ON")
    assert lb.cmake_args("x86-64-v3") == "-DGGML_NATIVE=ON"
    custom = lb.wheel_folder("0.3.36", "x86-64-v3", lb.cmake_args("x86-64-v3"), "x86_64")
    assert custom != v3 and "-custom-" in custom.name


def _fake_wheel(folder: Path, library: bytes) -> Path:
    """A wheel holding one shared library, with a RECORD as pip writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
    digest = base64.urlsafe_b64encode(hashlib.sha256(library).digest()).rstrip(b"=").decode()
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("llama_cpp/lib/libggml-cpu.so", library)
        archive.writestr("llama_cpp_python-0.3.36.dist-info/RECORD",
                         f"llama_cpp/lib/libggml-cpu.so,sha256={digest},{len(library)}\n"
                         "llama_cpp_python-0.3.36.dist-info/RECORD,,\n")
    return wheel


def test_a_cached_wheel_is_used_without_building(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = lb.choose_profile(lb.platform.machine(), lb.cpu_flags())
    folder = lb.wheel_folder(lb.pinned_version(), profile, lb.cmake_args(profile), lb.platform.machine())
    wheel = _fake_wheel(folder, b"portable")
    monkeypatch.setattr(lb, "_build", lambda *a, **k: pytest.fail("built although the cache had the wheel"))
    assert lb.ensure_wheel(quiet=True) == wheel


def test_pip_install_takes_llama_cpp_only_from_the_portable_wheel(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path / "w", b"x")
    calls: list[list[str]] = []
    monkeypatch.setattr(lb, "ensure_wheel", lambda quiet=False: wheel)
    monkeypatch.setattr(lb, "_pip_install", lambda *args: calls.append(list(args)) or 0)
    # tox passes pip's own options first: they must reach pip untouched.
    assert lb.main(["pip-install", "--force-reinstall", "--no-deps", "pkg.whl"]) == 0
    assert calls == [["--find-links", str(wheel.parent), "--only-binary", "llama-cpp-python",
                      "--force-reinstall", "--no-deps", "pkg.whl"]]


def test_installed_build_is_compared_by_its_libraries(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    same = _fake_wheel(tmp_path / "a", b"portable")
    other = _fake_wheel(tmp_path / "b", b"native")
    with zipfile.ZipFile(same) as archive:
        record = archive.read("llama_cpp_python-0.3.36.dist-info/RECORD").decode()

    class Installed:
        def read_text(self, name: str) -> str:
            return record

    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: Installed())
    assert lb.installed_matches(same) is True
    assert lb.installed_matches(other) is False


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (binutils)")
def test_installed_llama_cpp_has_no_avx512_or_amx_instruction() -> None:
    """What this environment really runs: a build that faults on no x86-64 machine with AVX2.

    AVX-512 code touches zmm registers; AMX code uses tile instructions (ldtilecfg, tileloadd,
    tdpb*). Neither may appear in any llama.cpp library installed here.
    """
    import llama_cpp

    libraries = sorted((Path(llama_cpp.__file__).parent / "lib").glob("*.so"))
    assert libraries, "no llama.cpp shared library found"
    for library in libraries:
        listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(library)], capture_output=True,
                                 text=True, check=True).stdout
        assert "%zmm" not in listing, f"{library.name} holds AVX-512 code"
        assert not re.search(r"\b(ldtilecfg|tileloadd|tdpb[a-z]*)\b", listing), f"{library.name} holds AMX code"
    features = llama_cpp.llama_print_system_info().decode()
    assert not re.search(r"(AVX512|AMX)[A-Z0-9_]* = 1", features), features
