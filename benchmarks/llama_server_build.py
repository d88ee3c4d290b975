"""llama.cpp's own C++ `llama-server`, built from the llama.cpp sources inside the pinned
llama-cpp-python sdist (`vendor/llama.cpp`) with the same portable flags as our wheel, and cached
by a hash of version + flags: a benchmark peer with continuous batching (`-np N`).

    python benchmarks/llama_server_build.py          # prints the binary's path (builds it once, ~6 min)
"""

from __future__ import annotations

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


def _build_settings() -> tuple[str, str, str]:
    """(llama-cpp-python version, profile, cmake args) of this machine's build."""
    version = llama_build.pinned_version()
    profile = llama_build.choose_profile(platform.machine(), llama_build.cpu_flags())
    return version, profile, llama_build.cmake_args(profile) + " -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF"


def cached_binary() -> Path:
    """Where the llama-server for this machine's profile lives once built (it may not exist yet)."""
    version, profile, args = _build_settings()
    key = hashlib.sha256(f"llama-server {version} {args} {platform.machine()}".encode()).hexdigest()[:12]
    return llama_build.cache_root().parent / "bin" / f"llama-server-{version}-{profile}-{key}" / "llama-server"


def binary_path() -> Path:
    """Where the llama-server for this machine's profile lives (built if missing)."""
    binary = cached_binary()
    if binary.is_file():
        return binary
    folder = binary.parent
    version, profile, args = _build_settings()
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
    print(binary_path())
