"""A portable llama-cpp-python build, made once per set of compiler flags and kept in a project cache.

Why: llama-cpp-python ships only an sdist, and its default build is `-march=native` (GGML_NATIVE).
A wheel built on a CPU with AVX-512 and AMX uses them, so it faults (SIGILL, or a general
protection fault in llama.cpp's AMX kernels) on the next machine; pip's own wheel cache keys a
built wheel by the sdist only, never by CMAKE_ARGS, so a native wheel from an earlier install
would be reused silently. Here the flags are chosen on purpose (a named profile), the wheel is
built with pip's cache off, and it lives in a folder whose name is a hash of version + flags:
a wheel is only ever found under the flags it was built with.

Profiles (x86-64 levels, chosen from the CPU the wheel is built on; none uses AMX, whose kernels
are what faulted, nor AVX-512's later extensions VBMI/VNNI/BF16):
  x86-64-v4  v3 + AVX-512 F/CD/VL/DQ/BW, on a CPU that has them (Intel Skylake-SP and later
             servers, AMD Zen 4 and later): the default on AMD's, where it decoded faster (25% at
             730 tokens of context); elsewhere only when asked for ($CHATSPEC_LLAMA_PROFILE=x86-64-v4),
             as on an Intel Xeon it was slower than v3 in every run that measured both
             (docs/benchmarks.md).
  x86-64-v3  SSE4.2 AVX AVX2 FMA F16C BMI2: every x86-64 CPU since 2013-2015 (Intel Haswell,
             AMD Excavator/Zen). The default wherever the CPU has those and v4 is not chosen.
  x86-64-v2  SSE4.2 only: older CPUs (chosen automatically on them).
  generic    GGML_NATIVE off, llama.cpp's own defaults (non-x86 machines).

One patch to llama.cpp's source (`PATCHES`), applied to the sdist before building, with the
patch in the cache key and, with a digest of its text, in the marker: llama.cpp's CPU flash attention picks a kernel
by batch shape (a tiled one from 64 query rows of a sequence, a row-by-row one below; for one
token alone over 512 KV cells a KV-split one), and the three round differently, so with it on a
seeded request gave other tokens cached or not, alone or batched. Patched, the choice depends
only on the number of the sequence's own query rows (tiled from 2, row-by-row for 1, never
split), which the engine's scheduler keeps the same cached or not (one row only for sampled
tokens), so the engine turns flash attention on only for a build that carries the patch.

A wheel is only ever picked for the CPU features it needs: the cache's key holds them, and the
wheel carries `llama_cpp/chatspec_build.json` (its profile and the CPU flags its code needs), which
`build_mismatch` reads without loading the library: a server refuses to start, with a message that
says why, on a CPU that lacks one of them (a v4 wheel copied to a machine without AVX-512), instead
of dying of SIGILL in the middle of a request.

Stdlib only: tox runs it by path (`install_command`, `commands_pre`) before the project's
dependencies exist.

    python reference_server/llama_build.py install       # into this interpreter (developers)
    python reference_server/llama_build.py status        # what is installed, what the cache holds
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DIST = "llama-cpp-python"
PROFILE_ENV = "CHATSPEC_LLAMA_PROFILE"  # a profile asked for by name (x86-64-v4 is only ever chosen so)
FLAGS_ENV = "CHATSPEC_LLAMA_CMAKE_ARGS"  # replaces the profile's flags (e.g. a CUDA build); part of the key
CACHE_ENV = "CHATSPEC_WHEEL_CACHE"
MARKER = "llama_cpp/chatspec_build.json"  # written into every wheel built here
# Bumped when the marker's content changes (2: patches recorded with digests): part of the cache
# key, so a wheel whose marker a reader here no longer understands is built again, not reused.
MARKER_FORMAT = 2
_OFF_X86 = ("AVX_VNNI", "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AMX_TILE", "AMX_INT8", "AMX_BF16")
_OFF_LATER = tuple(name for name in _OFF_X86 if name != "AVX512")  # what v4 keeps off
_V3 = ("GGML_NATIVE=OFF", "GGML_SSE42=ON", "GGML_AVX=ON", "GGML_AVX2=ON", "GGML_FMA=ON", "GGML_F16C=ON", "GGML_BMI2=ON")
PROFILES: dict[str, tuple[str, ...]] = {
    # GGML_AVX512 compiles with -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw (x86-64-v4's set).
    "x86-64-v4": (*_V3, "GGML_AVX512=ON", *(f"GGML_{name}=OFF" for name in _OFF_LATER)),
    "x86-64-v3": (*_V3, *(f"GGML_{name}=OFF" for name in _OFF_X86)),
    "x86-64-v2": ("GGML_NATIVE=OFF", "GGML_SSE42=ON", "GGML_AVX=OFF", "GGML_AVX2=OFF", "GGML_FMA=OFF",
                  "GGML_F16C=OFF", "GGML_BMI2=OFF", *(f"GGML_{name}=OFF" for name in _OFF_X86)),
    "generic": ("GGML_NATIVE=OFF",),
}
# What each profile's code needs from the CPU (/proc/cpuinfo names).
V2_CPU_FLAGS = frozenset({"sse4_2"})
V3_CPU_FLAGS = V2_CPU_FLAGS | {"avx", "avx2", "fma", "f16c", "bmi2"}
V4_CPU_FLAGS = V3_CPU_FLAGS | {"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"}
NEEDS: dict[str, frozenset[str]] = {"x86-64-v4": V4_CPU_FLAGS, "x86-64-v3": V3_CPU_FLAGS,
                                    "x86-64-v2": V2_CPU_FLAGS, "generic": frozenset()}


@dataclass(frozen=True)
class SourcePatch:
    """An exact text replacement in the sdist; `old` must occur exactly once, or the build stops."""

    path: str
    old: str
    new: str


# name -> the replacements that make it; the marker records each name with its digest (`patches`).
FA_ROWS_PATCH = "flash-attn-kernel-by-rows"
PATCHES: dict[str, tuple[SourcePatch, ...]] = {
    FA_ROWS_PATCH: (
        SourcePatch("vendor/llama.cpp/ggml/src/ggml-cpu/ops.cpp",
                    "const bool use_split_kv_path = !use_ref && (neq1 == 1 && neq3 == 1)",
                    "const bool use_split_kv_path = false && !use_ref && (neq1 == 1 && neq3 == 1)"),
        SourcePatch("vendor/llama.cpp/ggml/src/ggml-cpu/ops.cpp",
                    "                                neq1 >= Q_TILE_SZ);",
                    "                                neq1 >= 2);"),
    ),
}


def patch_digest(items: tuple[SourcePatch, ...]) -> str:
    """What a patch changes, in 12 hex digits: a build counts as patched only with today's text."""
    return hashlib.sha256(json.dumps([[p.path, p.old, p.new] for p in items]).encode()).hexdigest()[:12]


def pinned_version(pyproject: Path | None = None) -> str:
    """The llama-cpp-python version pyproject.toml pins (the one place it is written)."""
    path = pyproject or Path(__file__).resolve().parents[1] / "pyproject.toml"
    if path.is_file():
        text = path.read_text(encoding="utf-8")
    else:  # installed as a package: the project's own metadata carries the same pin
        import importlib.metadata

        text = "\n".join(importlib.metadata.requires("chatspec") or [])
    match = re.search(r"llama-cpp-python==([0-9][0-9A-Za-z.+-]*)", text)
    if not match:
        raise SystemExit(f"error: no 'llama-cpp-python==VERSION' pin found in {path}")
    return match.group(1)


def _cpuinfo_field(name: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The value of the first `name : value` line of /proc/cpuinfo (None: no such line, or no file)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags as Linux names them (empty where there is no /proc/cpuinfo)."""
    return frozenset((_cpuinfo_field("flags", cpuinfo) or "").split())


def cpu_vendor(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's vendor_id (AuthenticAMD, GenuineIntel; empty where there is no /proc/cpuinfo)."""
    return _cpuinfo_field("vendor_id", cpuinfo) or ""


# Where AVX-512 is chosen without being asked for: AMD's (Zen 4 on), measured faster with it (decode
# at 730 tokens of context 25% faster, issue 24). On the Intel Xeon measured it was slower in three
# runs (docs/benchmarks.md), so there v3 stays the default and v4 is asked for by name.
V4_BY_DEFAULT_VENDORS = frozenset({"AuthenticAMD"})


def choose_profile(machine: str, flags: frozenset[str], vendor: str, wanted: str | None = None) -> str:
    """The profile for a machine: v4 on an AVX-512 CPU of a vendor in `V4_BY_DEFAULT_VENDORS`, v3
    where the CPU has it, v2 on older x86-64, generic elsewhere; or `wanted` (default:
    $CHATSPEC_LLAMA_PROFILE), refused when the CPU lacks what it needs."""
    wanted = os.environ.get(PROFILE_ENV, "").strip() or None if wanted is None else wanted
    if wanted is not None:
        if wanted not in PROFILES:
            raise SystemExit(f"error: ${PROFILE_ENV}={wanted!r} is no profile; known: {', '.join(PROFILES)}")
        missing = sorted(NEEDS[wanted] - flags)
        if missing:
            raise SystemExit(f"error: profile {wanted} needs CPU features this CPU lacks: {', '.join(missing)}")
        return wanted
    if machine.lower() not in ("x86_64", "amd64"):
        return "generic"
    if V4_CPU_FLAGS <= flags and vendor in V4_BY_DEFAULT_VENDORS:
        return "x86-64-v4"
    return "x86-64-v3" if V3_CPU_FLAGS <= flags else "x86-64-v2"


def this_machines_profile() -> str:
    """`choose_profile` for the CPU this runs on (what the build, `status` and the benchmarks use)."""
    return choose_profile(platform.machine(), cpu_flags(), cpu_vendor())


def cmake_args(profile: str) -> str:
    """CMAKE_ARGS for a profile, or the user's own from $CHATSPEC_LLAMA_CMAKE_ARGS."""
    override = os.environ.get(FLAGS_ENV, "").strip()
    if override:
        return override
    return " ".join(f"-D{flag}" for flag in PROFILES[profile])


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "chatspec" / "wheels"


def wheel_folder(version: str, profile: str, args: str, machine: str) -> Path:
    """The folder for one (version, flags, machine) key: the flags, which name the CPU features the
    build uses, are part of its name, so a wheel is never found for a CPU it was not built for."""
    patches = {name: [[p.path, p.old, p.new] for p in items] for name, items in PATCHES.items()}
    key = hashlib.sha256(json.dumps([DIST, version, args, machine, patches, MARKER_FORMAT]).encode()).hexdigest()[:12]
    label = "custom" if os.environ.get(FLAGS_ENV, "").strip() else profile
    return cache_root() / f"{DIST}-{version}-{machine}-{label}-{key}"


def find_wheel(folder: Path) -> Path | None:
    wheels = sorted(folder.glob("llama_cpp_python-*.whl"))
    return wheels[0] if wheels else None


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One builder per folder at a time (tox envs may install in parallel)."""
    import fcntl

    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_wheel(quiet: bool = False) -> Path:
    """The portable wheel for this machine's profile, built now if the cache lacks it."""
    version = pinned_version()
    machine = platform.machine() or "unknown"
    profile = this_machines_profile()
    args = cmake_args(profile)
    folder = wheel_folder(version, profile, args, machine)
    wheel = find_wheel(folder)
    if wheel is not None:
        return wheel
    with _locked(folder):
        wheel = find_wheel(folder)
        if wheel is not None:
            return wheel
        return _build(version, profile, args, folder, quiet)


def _build(version: str, profile: str, args: str, folder: Path, quiet: bool) -> Path:
    cores = os.cpu_count() or 1
    log_path = folder.parent / f"{folder.name}.build.log"
    say = (lambda _msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    say(f"chatspec: building {DIST} {version} from source, profile {profile} "
        f"(CMAKE_ARGS={args}); about 6 minutes on 2 cores, once per flag set. Log: {log_path}")
    env = {**os.environ, "CMAKE_ARGS": args, "FORCE_CMAKE": "1",
           "CMAKE_BUILD_PARALLEL_LEVEL": os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(cores))}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llama-wheel-", dir=folder.parent) as tmp:
        with open(log_path, "w", encoding="utf-8") as log:
            source = _patched_sdist(version, Path(tmp) / "sdist", log)
            # --no-cache-dir: pip's wheel cache would hand back a wheel built earlier with other flags.
            command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir",
                       "--wheel-dir", tmp, str(source)]
            log.write(f"$ CMAKE_ARGS={args!r} {' '.join(command)}\n")
            log.flush()
            result = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
        built = find_wheel(Path(tmp))
        if result.returncode != 0 or built is None:
            tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
            raise SystemExit(f"{tail}\nerror: building {DIST} {version} failed (exit {result.returncode}); "
                             f"full log: {log_path}")
        staging = Path(tmp) / "done"
        staging.mkdir()
        info = {"dist": DIST, "version": version, "profile": profile, "cmake_args": args,
                "cpu_flags_needed": sorted(needed_flags(profile)),
                "patches": {name: patch_digest(items) for name, items in sorted(PATCHES.items())},
                "machine": platform.machine(),
                "built_on_cpu": cpu_model(), "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_seconds": round(time.monotonic() - started, 1)}
        add_marker(built, info)
        shutil.move(str(built), staging / built.name)
        (staging / "build-info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)  # appears whole or not at all
    say(f"chatspec: built in {time.monotonic() - started:.0f} s: {folder}")
    return find_wheel(folder)  # type: ignore[return-value]


def _patched_sdist(version: str, into: Path, log: Any) -> Path:
    """Download the sdist of `version`, unpack it under `into` and apply PATCHES; its folder."""
    import tarfile

    into.mkdir(parents=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--no-binary", DIST,
               "--dest", str(into), f"{DIST}=={version}"]
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    if subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False).returncode != 0:
        raise SystemExit(f"error: could not download the {DIST} {version} sdist; see {log.name}")
    archives = sorted(into.glob("*.tar.gz"))
    if not archives:
        raise SystemExit(f"error: pip saved no {DIST} {version} sdist (.tar.gz) in {into}; see {log.name}")
    with tarfile.open(archives[0]) as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
            tar.extractall(into, filter="data")
        else:
            tar.extractall(into)  # noqa: S202 - the sdist pip just fetched for the pin
    root = next(path for path in into.iterdir() if path.is_dir())
    try:
        apply_patches(root, PATCHES)
    except SystemExit as exc:
        log.write(f"{exc}\n")
        raise
    log.write(f"applied patches {', '.join(sorted(PATCHES))} to {root}\n")
    return root


def apply_patches(root: Path, patches: dict[str, tuple[SourcePatch, ...]]) -> None:
    """Apply every replacement under `root`; stop, naming patch and file, where a text is not
    found exactly once (a new llama-cpp-python pin must be looked at, not silently built unpatched)."""
    for name, items in patches.items():
        for patch in items:
            path = root / patch.path
            text = path.read_text(encoding="utf-8")
            if text.count(patch.old) != 1:
                raise SystemExit(f"error: patch {name}: {patch.path} holds {text.count(patch.old)} copies of "
                                 f"{patch.old!r}, not 1; update PATCHES in reference_server/llama_build.py "
                                 "for this llama-cpp-python version")
            path.write_text(text.replace(patch.old, patch.new), encoding="utf-8")


def installed_patches() -> frozenset[str]:
    """The PATCHES the installed llama-cpp-python was built with, as they read today (empty: none,
    not built here, or built with another text of the patch: a name alone proves nothing)."""
    info = _installed_marker()
    recorded = info.get("patches") if info else None
    if not isinstance(recorded, dict):  # absent, or a list of names from before digests were kept
        return frozenset()
    return frozenset(name for name, items in PATCHES.items() if recorded.get(name) == patch_digest(items))


def needed_flags(profile: str) -> frozenset[str]:
    """The CPU flags a build of this profile needs (none known for $CHATSPEC_LLAMA_CMAKE_ARGS builds)."""
    return frozenset() if os.environ.get(FLAGS_ENV, "").strip() else NEEDS.get(profile, frozenset())


def add_marker(wheel: Path, info: dict[str, object]) -> None:
    """Write MARKER (the build's profile and the CPU flags it needs) into the wheel, its RECORD
    line included, so the installed library says what it needs without being loaded."""
    import base64
    import zipfile

    data = (json.dumps(info, indent=2) + "\n").encode("utf-8")
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    rewritten = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(rewritten, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            content = source.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                content += f"{MARKER},sha256={digest},{len(data)}\n".encode()
            if item.filename != MARKER:
                target.writestr(item, content)
        target.writestr(MARKER, data)
    rewritten.replace(wheel)


def build_mismatch(cpu: frozenset[str] | None = None) -> str | None:
    """Why the installed llama-cpp-python cannot run on this CPU (None: it can, or it carries no
    marker, e.g. a build of the user's own). Reads the marker without importing llama_cpp: a build
    with instructions the CPU lacks may fault as soon as its library is loaded."""
    info = _installed_marker()
    if info is None:
        return None
    flags = cpu_flags() if cpu is None else cpu
    missing = sorted(set(info.get("cpu_flags_needed", ())) - flags)
    if not missing or not flags:  # no /proc/cpuinfo: nothing to judge by
        return None
    return (f"the installed llama-cpp-python was built for {info.get('profile')} on {info.get('built_on_cpu')} "
            f"and needs CPU features this CPU lacks: {', '.join(missing)}. Rebuild it for this machine: "
            f"python reference_server/llama_build.py install")


def _installed_marker() -> dict[str, Any] | None:
    """The installed llama_cpp's MARKER, read without importing llama_cpp (None: no marker)."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    marker = Path(next(iter(spec.submodule_search_locations))) / Path(MARKER).name
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def cpu_model() -> str:
    """The CPU's model name, for records of where something was built or measured."""
    return _cpuinfo_field("model name") or platform.processor() or "unknown"


def _record_hashes(record_text: str) -> dict[str, str]:
    """path -> hash for the shared libraries and the marker listed in a wheel's RECORD (a build
    whose libraries came out the same but whose marker says more is installed again)."""
    hashes = {}
    for line in record_text.splitlines():
        parts = line.rsplit(",", 2)
        if len(parts) == 3 and (parts[0].endswith(".so") or parts[0] == MARKER) and parts[1]:
            hashes[parts[0]] = parts[1]
    return hashes


def installed_matches(wheel: Path) -> bool | None:
    """Whether this interpreter's llama-cpp-python holds exactly the wheel's libraries (None: not installed)."""
    import importlib.metadata
    import zipfile

    try:
        installed = importlib.metadata.distribution(DIST).read_text("RECORD") or ""
    except importlib.metadata.PackageNotFoundError:
        return None
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD"))
        wanted = _record_hashes(archive.read(name).decode("utf-8"))
    have = _record_hashes(installed)
    return bool(wanted) and all(have.get(path) == digest for path, digest in wanted.items())


def _pip_install(*args: str) -> int:
    return subprocess.run([sys.executable, "-m", "pip", "install", *args], check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python reference_server/llama_build.py",
        description="Build llama-cpp-python for the x86-64 level of this CPU (no -march=native, no AMX), "
                    "cache the wheel under a name derived from its flags, and install it. "
                    f"${FLAGS_ENV} replaces the profile's CMAKE_ARGS; ${CACHE_ENV} moves the cache "
                    "(default ~/.cache/chatspec/wheels).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("wheel", help="build the wheel if the cache lacks it; print its path")
    sub.add_parser("install", help="install the portable wheel into this interpreter (replacing any other build)")
    sub.add_parser("ensure-installed", help="like install, but only when the installed build differs")
    sub.add_parser("status", help="the profile, the cached wheel and whether it is the installed one")
    sub.add_parser("pip-install", help="pip install ARGS..., taking llama-cpp-python only from the portable "
                                       "wheel (tox's install_command); every later argument goes to pip")
    argv = list(sys.argv[1:] if argv is None else argv)
    pip_args = argv[1:] if argv[:1] == ["pip-install"] else []  # pip's own options, untouched
    args = parser.parse_args(argv[:1] if pip_args else argv)

    if args.command == "status":
        profile = this_machines_profile()
        folder = wheel_folder(pinned_version(), profile, cmake_args(profile), platform.machine())
        wheel = find_wheel(folder)
        print(f"profile: {profile} (needs CPU flags: {' '.join(sorted(needed_flags(profile))) or 'none known'})\n"
              f"cmake args: {cmake_args(profile)}\ncache: {folder}")
        print(f"installed build on this CPU: {build_mismatch() or 'fits (or carries no chatspec marker)'}")
        print(f"wheel: {wheel or 'not built yet'}")
        if wheel is not None:
            state = {None: "not installed", True: "this wheel", False: "ANOTHER build"}[installed_matches(wheel)]
            print(f"installed in this interpreter: {state}")
        return 0
    wheel = ensure_wheel()
    if args.command == "wheel":
        print(wheel)
        return 0
    if args.command == "pip-install":
        # --only-binary: never build llama-cpp-python from the sdist (or take pip's cached build of it).
        return _pip_install("--find-links", str(wheel.parent), "--only-binary", DIST, *pip_args)
    if args.command == "ensure-installed" and installed_matches(wheel):
        return 0
    if args.command == "ensure-installed":
        print(f"chatspec: replacing the installed {DIST} with the portable build {wheel.name} "
              f"({wheel.parent.name})", file=sys.stderr, flush=True)
    return _pip_install("--force-reinstall", "--no-deps", str(wheel))


if __name__ == "__main__":
    sys.exit(main())
