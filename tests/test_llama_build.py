"""The portable llama-cpp-python build: profiles from the CPU's x86-64 level, a cache keyed by the flags
and the features they need, pip never building the sdist itself, a marker in every wheel that lets a
server refuse a build its CPU cannot run, and (on the installed library) no instruction beyond its
profile: no AMX anywhere, AVX-512 only in a v4 build on a CPU that has it."""

from __future__ import annotations

import base64
import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
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
    monkeypatch.delenv(lb.PROFILE_ENV, raising=False)
    return tmp_path / "cache"


V4 = V3 | {"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"}


def test_profile_follows_the_cpu_never_its_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(lb.PROFILE_ENV, raising=False)
    for vendor in ("GenuineIntel", "AuthenticAMD", ""):
        assert lb.choose_profile("x86_64", V3, vendor) == "x86-64-v3"
        assert lb.choose_profile("x86_64", V3 | {"avx512f", "amx_tile", "amx_int8"}, vendor) == "x86-64-v3"
        assert lb.choose_profile("x86_64", V3 - {"avx2"}, vendor) == "x86-64-v2"
        assert lb.choose_profile("aarch64", frozenset(), vendor) == "generic"
    # AVX-512 by default only where it was measured faster (AMD); elsewhere only when asked
    assert lb.choose_profile("x86_64", V4 | {"amx_tile", "avx512_vnni"}, "GenuineIntel") == "x86-64-v3"
    assert lb.choose_profile("x86_64", V4, "") == "x86-64-v3"
    assert lb.choose_profile("x86_64", V4 | {"avx512_vnni", "avx512_bf16"}, "AuthenticAMD") == "x86-64-v4"


def test_v4_is_taken_when_asked_and_only_on_a_cpu_that_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert lb.choose_profile("x86_64", V4, "GenuineIntel", wanted="x86-64-v4") == "x86-64-v4"
    monkeypatch.setenv(lb.PROFILE_ENV, "x86-64-v4")
    assert lb.choose_profile("x86_64", V4 | {"amx_tile", "avx512_vnni"}, "GenuineIntel") == "x86-64-v4"
    with pytest.raises(SystemExit, match="needs CPU features this CPU lacks: avx512bw, avx512cd"):
        lb.choose_profile("x86_64", V3, "AuthenticAMD")
    monkeypatch.setenv(lb.PROFILE_ENV, "x86-64-v3")  # asked for: v3 even where v4 is the default
    assert lb.choose_profile("x86_64", V4, "AuthenticAMD") == "x86-64-v3"
    monkeypatch.setenv(lb.PROFILE_ENV, "x86-64-v9")
    with pytest.raises(SystemExit, match="is no profile"):
        lb.choose_profile("x86_64", V4, "AuthenticAMD")


@pytest.mark.parametrize("profile", ["x86-64-v4", "x86-64-v3", "x86-64-v2"])
def test_x86_profiles_turn_native_amx_and_later_avx512_off(profile: str) -> None:
    args = lb.cmake_args(profile).split()
    assert "-DGGML_NATIVE=OFF" in args
    switched_on = {a.removeprefix("-D").split("=")[0] for a in args if a.endswith("=ON")}
    assert {name for name in switched_on if "AVX512" in name or "AMX" in name} == (
        {"GGML_AVX512"} if profile == "x86-64-v4" else set())
    for name in ("AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AMX_TILE", "AMX_INT8", "AVX_VNNI"):
        assert f"-DGGML_{name}=OFF" in args
    assert lb.NEEDS[profile] <= V4 and ("avx512f" in lb.NEEDS[profile]) == (profile == "x86-64-v4")


def test_a_wheel_is_never_found_under_another_profile() -> None:
    v4 = lb.wheel_folder("0.3.36", "x86-64-v4", lb.cmake_args("x86-64-v4"), "x86_64")
    v3 = lb.wheel_folder("0.3.36", "x86-64-v3", lb.cmake_args("x86-64-v3"), "x86_64")
    assert v4 != v3 and "x86-64-v4" in v4.name


def test_the_marker_is_written_into_the_wheel_with_its_record_line(tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path, b"lib")
    lb.add_marker(wheel, {"profile": "x86-64-v4", "cpu_flags_needed": sorted(V4)})
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(lb.MARKER)
        record = archive.read("llama_cpp_python-0.3.36.dist-info/RECORD").decode()
        assert archive.read("llama_cpp/lib/libggml-cpu.so") == b"lib"
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    assert f"{lb.MARKER},sha256={digest},{len(data)}" in record.splitlines()
    assert json.loads(data)["cpu_flags_needed"] == sorted(V4)


def _installed_marker(monkeypatch: pytest.MonkeyPatch, folder: Path, needed: list[str] | None) -> None:
    """A llama_cpp package folder (never imported) carrying a marker that needs `needed`."""
    folder.mkdir(parents=True, exist_ok=True)
    if needed is not None:
        (folder / Path(lb.MARKER).name).write_text(json.dumps(
            {"profile": "x86-64-v4", "built_on_cpu": "Some EPYC", "cpu_flags_needed": needed}))
    spec = importlib.machinery.ModuleSpec("llama_cpp", None, is_package=True)
    spec.submodule_search_locations = [str(folder)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec if name == "llama_cpp" else None)


def test_a_v4_build_is_refused_on_a_cpu_without_avx512(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _installed_marker(monkeypatch, tmp_path / "llama_cpp", sorted(V4))
    message = lb.build_mismatch(V3)
    assert message and "x86-64-v4" in message and "avx512bw, avx512cd, avx512dq, avx512f, avx512vl" in message
    assert "llama_build.py install" in message
    assert lb.build_mismatch(V4) is None and lb.build_mismatch(V4 | {"amx_tile"}) is None


def test_a_build_without_a_marker_is_not_judged(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _installed_marker(monkeypatch, tmp_path / "llama_cpp", None)
    assert lb.build_mismatch(V3) is None


def test_the_server_refuses_a_build_its_cpu_lacks_before_loading_it(tmp_path: Path) -> None:
    """End to end, in a child: a llama_cpp whose marker needs a flag no CPU has, and whose import
    would say so; the server exits 2 with the reason and never imports it."""
    package = tmp_path / "llama_cpp"
    package.mkdir()
    (package / "__init__.py").write_text("raise SystemExit('llama_cpp was imported')\n")
    (package / Path(lb.MARKER).name).write_text(json.dumps(
        {"profile": "x86-64-v4", "built_on_cpu": "Some EPYC", "cpu_flags_needed": ["avx2", "no_such_cpu_flag"]}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    done = subprocess.run([sys.executable, "-m", "reference_server", "--no-auth", "--self-check-only"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "no_such_cpu_flag" in done.stderr and "was built for x86-64-v4" in done.stderr
    assert "was imported" not in done.stderr + done.stdout


def test_cpu_flags_reads_proc_cpuinfo_format(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx avx2 amx_tile\n\nprocessor\t: 1\n")
    assert lb.cpu_flags(info) == frozenset({"fpu", "avx", "avx2", "amx_tile"})
    assert lb.cpu_flags(tmp_path / "missing") == frozenset()


def test_cpu_vendor_reads_proc_cpuinfo_format(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx\n")
    assert lb.cpu_vendor(info) == "AuthenticAMD"
    assert lb.cpu_vendor(tmp_path / "missing") == ""


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
    profile = lb.this_machines_profile()
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
    # the same libraries with a newer marker (patch digests): installed again, or the marker stays old
    lb.add_marker(same, {"patches": {lb.FA_ROWS_PATCH: lb.patch_digest(lb.PATCHES[lb.FA_ROWS_PATCH])}})
    assert lb.installed_matches(same) is False


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (binutils)")
def test_installed_llama_cpp_has_no_instruction_beyond_its_profile() -> None:
    """What this environment really runs: no AMX anywhere (tile instructions: ldtilecfg, tileloadd,
    tdpb*), none of AVX-512's later extensions, and AVX-512 code (zmm registers) only in a v4 build,
    which its marker names and which only a CPU with AVX-512 is given."""
    import llama_cpp

    marker = Path(llama_cpp.__file__).parent / Path(lb.MARKER).name
    profile = json.loads(marker.read_text())["profile"] if marker.is_file() else None
    avx512 = profile == "x86-64-v4"
    if avx512:
        assert lb.V4_CPU_FLAGS <= lb.cpu_flags(), "a v4 build installed on a CPU without AVX-512"
    libraries = sorted((Path(llama_cpp.__file__).parent / "lib").glob("*.so"))
    assert libraries, "no llama.cpp shared library found"
    zmm = False
    for library in libraries:
        listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(library)], capture_output=True,
                                 text=True, check=True).stdout
        zmm |= "%zmm" in listing
        assert avx512 or "%zmm" not in listing, f"{library.name} holds AVX-512 code in a {profile} build"
        assert not re.search(r"\b(ldtilecfg|tileloadd|tdpb[a-z]*)\b", listing), f"{library.name} holds AMX code"
    assert zmm == avx512, f"a {profile} build {'without' if avx512 else 'with'} AVX-512 code"
    features = llama_cpp.llama_print_system_info().decode()
    assert not re.search(r"(AMX|AVX512_)[A-Z0-9_]* = 1|AVX_VNNI = 1", features), features
    assert ("AVX512 = 1" in features) == avx512, features


def test_patches_apply_once_or_stop_the_build_naming_what_is_missing(tmp_path: Path) -> None:
    source = tmp_path / "sdist" / "pkg" / "ops.cpp"
    source.parent.mkdir(parents=True)
    source.write_text("a = pick(rows >= 64);\nb = split(rows == 1);\n")
    patches = {"rows": (lb.SourcePatch("pkg/ops.cpp", "rows >= 64", "rows >= 2"),
                        lb.SourcePatch("pkg/ops.cpp", "split(rows == 1)", "split(false)"))}
    lb.apply_patches(tmp_path / "sdist", patches)
    assert source.read_text() == "a = pick(rows >= 2);\nb = split(false);\n"
    with pytest.raises(SystemExit, match=r"patch rows: pkg/ops.cpp holds 0 copies of 'rows >= 64'"):
        lb.apply_patches(tmp_path / "sdist", patches)  # already applied: the text is gone
    source.write_text("rows >= 64; rows >= 64;\n")
    with pytest.raises(SystemExit, match="holds 2 copies"):
        lb.apply_patches(tmp_path / "sdist", {"rows": patches["rows"][:1]})


def test_the_patches_are_part_of_the_wheels_key(monkeypatch: pytest.MonkeyPatch) -> None:
    args = lb.cmake_args("x86-64-v3")
    patched = lb.wheel_folder("0.3.36", "x86-64-v3", args, "x86_64")
    monkeypatch.setattr(lb, "PATCHES", {})
    assert lb.wheel_folder("0.3.36", "x86-64-v3", args, "x86_64") != patched


def test_the_markers_format_is_part_of_the_wheels_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cached wheel whose marker predates today's format (patch names without digests, which
    installed_patches no longer trusts) is built again, not reused with flash attention off."""
    args = lb.cmake_args("x86-64-v3")
    current = lb.wheel_folder("0.3.36", "x86-64-v3", args, "x86_64")
    monkeypatch.setattr(lb, "MARKER_FORMAT", lb.MARKER_FORMAT - 1)
    assert lb.wheel_folder("0.3.36", "x86-64-v3", args, "x86_64") != current


def test_installed_patches_come_from_the_marker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    folder = tmp_path / "llama_cpp"
    _installed_marker(monkeypatch, folder, ["avx2"])
    assert lb.installed_patches() == frozenset()  # a marker from before patches were made
    marker = folder / Path(lb.MARKER).name
    digest = lb.patch_digest(lb.PATCHES[lb.FA_ROWS_PATCH])
    marker.write_text(json.dumps({"profile": "x86-64-v3", "patches": {lb.FA_ROWS_PATCH: digest}}))
    assert lb.installed_patches() == {lb.FA_ROWS_PATCH}
    marker.write_text(json.dumps({"profile": "x86-64-v3", "patches": [lb.FA_ROWS_PATCH]}))
    assert lb.installed_patches() == frozenset()  # a name alone: built with some text of the patch, maybe not today's
    other = lb.patch_digest((lb.SourcePatch("ops.cpp", "neq1 >= Q_TILE_SZ", "neq1 >= 4"),))
    marker.write_text(json.dumps({"profile": "x86-64-v3", "patches": {lb.FA_ROWS_PATCH: other}}))
    assert lb.installed_patches() == frozenset()  # an older text of the patch under the same name


def test_the_installed_build_carries_the_patches_when_it_was_built_here() -> None:
    """tox installs llama-cpp-python from llama_build's wheel: that build must be the patched one
    (a wheel cached from before the patch would be found under another key, never reused)."""
    import llama_cpp

    marker = Path(llama_cpp.__file__).parent / Path(lb.MARKER).name
    if not marker.is_file():
        pytest.skip("llama-cpp-python was not built by reference_server/llama_build.py")
    assert lb.installed_patches() == set(lb.PATCHES)
