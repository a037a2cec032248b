"""llama.cpp from the one place it may come from: the tree vendored in PyPI's llama-cpp-python source distribution.

The sdist (pinned here with its sha256) holds llama.cpp with HunyuanOCR support (text model, libmtmd's vision encoder,
the GGUF converter and gguf-py) and its OpenAI-compatible `llama-server`. This module fetches it (pip, from PyPI
only), unpacks it, and says how to build it: `build_commands` is a plain cmake configure + build command list, so the
image's llama.cpp layer can run it inside its trixie chroot and the tests run the same list on the host.

Build choices (hunyuanocr.md, "llama.cpp spike"): no download capability (no prebuilt web UI fetched at build time,
no OpenSSL so no HTTPS model downloads); shared libraries with an $ORIGIN rpath, so the binaries and libraries of
`bin/` can be copied anywhere (`install_tree`); for the image, runtime CPU dispatch (`CMAKE_FLAGS`: every x86-64
variant of ggml's CPU backend as its own library, the best one loaded at start), for host tests the faster-to-build
native configuration (`HOST_FLAGS`).

`python -m imagebuilder.llamacpp_source [--cache DIR] [--portable]` builds llama-server on this host (`make
llama-cpp`) and prints the directory holding it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from appliance.files import sha256_file


@dataclass(frozen=True)
class Sdist:
    project: str
    version: str
    filename: str
    sha256: str


SDIST = Sdist(
    project="llama-cpp-python",
    version="0.3.36",
    filename="llama_cpp_python-0.3.36.tar.gz",
    sha256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
)
VENDOR = "vendor/llama.cpp"  # the llama.cpp tree inside the sdist
TARGETS = ("llama-server", "llama-quantize")  # the server, and llama-quantize for k-quants (imagebuilder.gguf)

# What every build shares: Release, shared libraries found through $ORIGIN, nothing that downloads, only the tools.
_COMMON_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DCMAKE_BUILD_RPATH_USE_ORIGIN=ON",  # bin/ can be copied elsewhere (install_tree) and still find its libraries
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # ON fetches the web UI from the internet at build time
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",  # no HTTPS client: llama-server cannot fetch models (-hf, URLs) even if asked
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
)
# The image's build: runs well on any x86-64 PC. Each CPU variant (AVX2 desktops, AVX-512 servers, ...) is its own
# libggml-cpu-*.so and the best one for the CPU is loaded at start. (The AMX variant crashes on Sapphire Rapids
# unless the server runs with --no-repack, which appliance.servers.llamacpp always passes.)
CMAKE_FLAGS = (
    *_COMMON_FLAGS,
    "-DGGML_NATIVE=OFF",
    "-DGGML_BACKEND_DL=ON",
    "-DGGML_CPU_ALL_VARIANTS=ON",
)
# Host tests only: one CPU backend for this machine, several times faster to compile than every variant.
HOST_FLAGS = (*_COMMON_FLAGS, "-DGGML_NATIVE=ON", "-DGGML_BACKEND_DL=OFF")


def fetch_sdist(cache_dir: str | os.PathLike) -> Path:
    """The pinned sdist in cache_dir/downloads, downloaded from PyPI with pip when missing; its sha256 checked."""
    downloads = Path(cache_dir) / "downloads"
    path = downloads / SDIST.filename
    if not path.is_file():
        downloads.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps"]
            + ["--no-binary", ":all:", "--dest", str(downloads), f"{SDIST.project}=={SDIST.version}"],
            check=True,
        )
    digest = sha256_file(path)
    if digest != SDIST.sha256:
        raise RuntimeError(f"{path}: sha256 {digest}, expected {SDIST.sha256} (remove it to download again)")
    return path


def source_tree(cache_dir: str | os.PathLike) -> Path:
    """The sdist's vendored llama.cpp tree, unpacked once under cache_dir/llama.cpp (fetching the sdist first)."""
    root = Path(cache_dir) / "llama.cpp" / f"src-{SDIST.version}"
    tree = root / SDIST.filename.removesuffix(".tar.gz") / VENDOR
    if not (tree / "CMakeLists.txt").is_file():
        sdist = fetch_sdist(cache_dir)
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        with tarfile.open(sdist) as archive:
            archive.extractall(partial, filter="data")
        shutil.rmtree(root, ignore_errors=True)
        partial.rename(root)
    return tree


def build_commands(
    source: str | os.PathLike,
    build_dir: str | os.PathLike,
    flags=CMAKE_FLAGS,
    jobs: int = 2,
    targets=TARGETS,
) -> list[list[str]]:
    """cmake configure + build of `targets` (binaries and libraries land in build_dir/bin), to run where the
    caller wants: on the host, or in a chroot with paths as seen there. Needs cmake, ninja, gcc/g++."""
    return [
        ["cmake", "-S", str(source), "-B", str(build_dir), "-G", "Ninja", *flags],
        ["cmake", "--build", str(build_dir), "--parallel", str(jobs), "--target", *targets],
    ]


def install_tree(build_dir: str | os.PathLike, install_prefix: str | os.PathLike, targets=TARGETS) -> Path:
    """Copy the built `targets` and every shared library beside them (libllama, libmtmd, libggml*, and the CPU
    variants of a portable build) into install_prefix/bin, which is returned. The $ORIGIN rpath makes it work
    wherever it lands (/opt/llama.cpp/bin on the image)."""
    built = Path(build_dir) / "bin"
    bin_dir = Path(install_prefix) / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(built.iterdir()):
        if path.name in targets or ".so" in path.name:
            target = bin_dir / path.name
            target.unlink(missing_ok=True)
            if path.is_symlink():
                target.symlink_to(os.readlink(path))
            else:
                shutil.copy2(path, target)
    return bin_dir


def build(
    source: str | os.PathLike,
    build_dir: str | os.PathLike,
    install_prefix: str | os.PathLike,
    flags=CMAKE_FLAGS,
    jobs: int = 2,
    targets=TARGETS,
    log=None,
) -> Path:
    """Configure, build and install here (the host); returns install_prefix/bin. cmake rebuilds only what changed."""
    for command in build_commands(source, build_dir, flags, jobs, targets):
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT if log else None)
    return install_tree(build_dir, install_prefix, targets)


def host_build_dir(cache_dir: str | os.PathLike, portable: bool = False) -> Path:
    """Where the host build of this sdist lives in the cache: build/ and install/bin/ inside."""
    return Path(cache_dir) / "llama.cpp" / f"host-{'portable' if portable else 'native'}-{SDIST.version}"


def host_bin_dir(cache_dir: str | os.PathLike, portable: bool = False) -> Path:
    return host_build_dir(cache_dir, portable) / "install" / "bin"


def host_build(cache_dir: str | os.PathLike, portable: bool = False, jobs: int = 2) -> Path:
    """Build llama-server (+ llama-quantize) for this host under the cache; the bin directory holding them."""
    root = host_build_dir(cache_dir, portable)
    flags = CMAKE_FLAGS if portable else HOST_FLAGS
    return build(source_tree(cache_dir), root / "build", root / "install", flags, jobs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="build llama.cpp's llama-server from the pinned sdist on this host")
    parser.add_argument("--cache", default="cache", help="the build cache (default: ./cache)")
    parser.add_argument("--portable", action="store_true", help="the image's configuration (every CPU variant)")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    print(host_build(args.cache, args.portable, args.jobs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
