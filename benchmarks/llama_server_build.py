"""llama.cpp's own C++ `llama-server`, built from the llama.cpp sources inside the pinned
llama-cpp-python sdist (`vendor/llama.cpp`) and cached by a hash of version + flags: a benchmark
peer with continuous batching (`-np N`).

Two builds: with the same flags as our wheel (`--same-flags`: what the engines alone are worth),
or the way a user builds it for their machine (the default: llama.cpp's own cmake defaults,
GGML_NATIVE on, every instruction this CPU has; its key holds the CPU's model and flags).

    python benchmarks/llama_server_build.py          # prints the binary's path (builds it once, ~6 min)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference_server import llama_build  # noqa: E402

_STATIC = " -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF"


def _build_settings(native: bool) -> tuple[str, str, str]:
    """(llama-cpp-python version, profile, cmake args) of this machine's build."""
    version = llama_build.pinned_version()
    if native:
        return version, "native", "-DGGML_NATIVE=ON" + _STATIC
    profile = llama_build.this_machines_profile()
    return version, profile, llama_build.cmake_args(profile) + _STATIC


def cached_binary(native: bool = True) -> Path:
    """Where this machine's llama-server lives once built (it may not exist yet)."""
    version, profile, args = _build_settings(native)
    cpu = f"{llama_build.cpu_model()} {sorted(llama_build.cpu_flags())}" if native else ""
    key = hashlib.sha256(f"llama-server {version} {args} {platform.machine()} {cpu}".encode()).hexdigest()[:12]
    return llama_build.cache_root().parent / "bin" / f"llama-server-{version}-{profile}-{key}" / "llama-server"


def binary_path(native: bool = True) -> Path:
    """Where this machine's llama-server lives (built if missing)."""
    binary = cached_binary(native)
    if binary.is_file():
        return binary
    folder = binary.parent
    version, profile, args = _build_settings(native)
    print(f"building llama-server {version} ({profile}: {args}); about 6 minutes on 2 cores, once",
          file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="llama-server-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", tmp,
                        f"llama-cpp-python=={version}"], check=True, stdout=subprocess.DEVNULL)
        (sdist,) = Path(tmp).glob("llama_cpp_python-*.tar.gz")
        with tarfile.open(sdist) as archive:
            archive.extractall(tmp, filter="data")
        source = next(Path(tmp).glob("llama_cpp_python-*/vendor/llama.cpp"))
        build = Path(tmp) / "build"
        jobs = str(os.cpu_count() or 1)
        subprocess.run(["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", *args.split()],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["cmake", "--build", str(build), "--target", "llama-server", "-j", jobs], check=True,
                       stdout=subprocess.DEVNULL)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(next(build.glob("bin/llama-server")), binary)
    return binary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--same-flags", action="store_true",
                        help="build with our wheel's portable flags instead of GGML_NATIVE")
    print(binary_path(native=not parser.parse_args().same_flags))
