"""llama.cpp layer (an image with the CPU model): llama-server and the shared libraries it loads, in /opt/llama.cpp.

Built from the llama.cpp tree vendored in PyPI's llama-cpp-python sdist (imagebuilder.llamacpp_source: the same
flags and cmake commands as the host's portable build), for the image's own Debian: in a throwaway chroot (the base
layer's squashfs under an overlay, as for the NVIDIA modules) where apt installs cmake, ninja and g++. Only
bin/llama-server and the libraries beside it (found through its $ORIGIN rpath) leave that chroot, stripped: no
headers, no Python, no other tool, no web UI.

Portable: GGML_NATIVE=OFF + GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS build one CPU backend per x86-64 level
(x64 ... zen4) and ggml loads the best one this PC's CPU runs. One variant is not built: sapphirerapids, the only
one with AMX. Its AMX matmul crashes on the first Q8_0 matmul on Sapphire Rapids (ggml-org/llama.cpp #20824:
SIGSEGV at ldtilecfg, SIGILL at tileloadd) unless repacking is off; without the variant such a CPU gets zen4's
AVX-512 BF16/VNNI code, which has no AMX instruction whatever the server's flags (appliance.servers.llamacpp also
passes --no-repack). The build checks that no AMX instruction is in the layer. GGML_OPENMP=OFF: ggml's own thread
pool, so nothing beyond the base layer's libc and libstdc++ is needed (checked with ldd on the base layer alone).

Keyed by the sdist's sha256, the build script and flags, the base layer's key (suite, mirrors, package lists) and
RECIPE; the toolchain's exact versions, the build time, the variants and the file sizes are in its meta.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from imagebuilder import layers, llamacpp_source, nvidia
from imagebuilder.context import BuildError, Context, explicit_epoch, hash_inputs, run

ORDER = 7  # OS-level files in /opt, above the NVIDIA layer, below the Python layers
PREFIX = "opt/llama.cpp"  # bin/llama-server and its libraries beside it (appliance.servers.llamacpp starts it)
TARGETS = ("llama-server",)
BUILD_PACKAGES = ("cmake", "ninja-build", "g++", "binutils")
DROPPED_VARIANTS = ("sapphirerapids",)  # AMX: see the module docstring
AMX_MNEMONICS = ("ldtilecfg", "tileloadd", "tdpbssd", "tilerelease")
# On top of llamacpp_source.CMAKE_FLAGS (the portable set, shared with the host's portable build): no OpenMP.
IMAGE_FLAGS = ("-DGGML_OPENMP=OFF",)
SRC_IN_CHROOT = "var/tmp/llama.cpp-src"
BUILD_IN_CHROOT = "var/tmp/llama.cpp-build"
# Bump when populate() changes what lands in the layer (the key follows the recipe's inputs, not this file).
RECIPE = 1
SDIST_EPOCH = 1667997441  # the mtime of every file in the pinned sdist (2022-11-09), used as the layer's epoch


def cmake_flags() -> list[str]:
    return [*llamacpp_source.CMAKE_FLAGS, *IMAGE_FLAGS]


def build_script(flags: list[str], jobs: int) -> str:
    """The shell script run in the chroot: drop the AMX variant, then llamacpp_source's configure and build of
    llama-server (which builds every CPU backend: ggml depends on them)."""
    drop = [f"sed -i '/ggml_add_cpu_backend_variant({v} /d' ggml/src/CMakeLists.txt" for v in DROPPED_VARIANTS]
    commands = llamacpp_source.build_commands(".", f"/{BUILD_IN_CHROOT}", flags, jobs, TARGETS)
    return "\n".join(["set -eu", f"cd /{SRC_IN_CHROOT}", *drop, *(shlex.join(c) for c in commands)]) + "\n"


def layer_key(ctx: Context, base_key: str, sdist_sha256: str) -> str:
    """What goes into the compile (the base layer, the sdist, the script and its flags, the toolchain's packages)
    and RECIPE, not this module's text: a changed message or check must not cost a half-hour recompile."""
    return hash_inputs(
        "llama.cpp",
        RECIPE,
        base_key,
        ctx.config.suite,
        sdist_sha256,
        build_script(cmake_flags(), jobs=0),  # the -j count is the build machine's, not an input
        BUILD_PACKAGES,
        ctx.config.compression,
        layer_epoch(ctx),
    )


def layer_epoch(ctx: Context) -> int:
    """The layer's file times: SOURCE_DATE_EPOCH when given, else the sdist's own (its files all carry one)."""
    explicit = explicit_epoch(ctx.config)
    return explicit if explicit is not None else SDIST_EPOCH


def build_llamacpp_layer(ctx: Context) -> str:
    base = next(layer for layer in ctx.layers if layer.name == "base")
    sdist = llamacpp_source.fetch_sdist(ctx.cache_dir)  # checked against its pinned sha256
    digest = llamacpp_source.SDIST.sha256
    layer = layers.cached_layer(ctx, "llama.cpp", ORDER, layer_key(ctx, base.key, digest), layer_epoch(ctx))
    sdist_facts = {"file": sdist.name, "sha256": digest}
    source = llamacpp_source.source_tree(ctx.cache_dir)
    layers.reuse_or_build(
        ctx, layer, lambda tree: {**populate(ctx, base.path, source, cmake_flags(), tree), "sdist": sdist_facts}
    )
    # Not build_seconds: the manifest holds nothing that varies from one build to the next
    ctx.info["llamacpp"] = {k: layer.meta.get(k) for k in ("sdist", "variants", "toolchain")}
    return (
        ("reused " if layer.cached else "built ")
        + layers.describe(layer)
        + f", CPU variants {', '.join(layer.meta['variants'])}"
        + ("" if layer.cached else f", compiled in {layer.meta['build_seconds']:.0f} s")
    )


def populate(ctx: Context, base_squashfs: Path, source: Path, flags: list[str], tree: Path) -> dict:
    """Build in one throwaway chroot, then check the result in a clean one made of the base layer alone."""
    started = time.monotonic()
    with nvidia.chroot(ctx, base_squashfs, ctx.work / "llama.cpp-build") as root:
        nvidia.apt_install(ctx, root, list(BUILD_PACKAGES))
        toolchain = dpkg_versions(ctx, root, ["cmake", "ninja-build", "g++", "binutils", "libc6-dev"])
        shutil.copytree(source, root / SRC_IN_CHROOT, symlinks=True)
        jobs = os.cpu_count() or 1
        print(f"    compiling llama.cpp in a {ctx.config.suite} chroot (-j{jobs}, every CPU variant) ...", flush=True)
        run_with_progress(
            ["chroot", root, "/bin/sh", "-c", build_script(flags, jobs)], ctx, ctx.work / "llama.cpp.log"
        )
        bin_dir = llamacpp_source.install_tree(root / BUILD_IN_CHROOT, root / PREFIX, TARGETS)
        inside = [f"/{PREFIX}/bin/{p.name}" for p in sorted(bin_dir.iterdir()) if not p.is_symlink()]
        run(["chroot", root, "strip", "--strip-unneeded", *inside], ctx)
        amx = [f for f in inside if has_amx(run(["chroot", root, "objdump", "-d", "--no-show-raw-insn", f]).stdout)]
        if amx:
            raise BuildError(f"AMX instructions in {', '.join(amx)}: that code path crashes (#20824)")
        shutil.copytree(root / PREFIX, tree / PREFIX, symlinks=True)
    seconds = time.monotonic() - started
    return {**build_check(ctx, base_squashfs, tree), "toolchain": toolchain, "build_seconds": round(seconds, 1)}


def run_with_progress(cmd: list, ctx: Context, log: Path, every: int = 10) -> None:
    """Run the compile with its output in `log`, printing ninja's progress ("[n/m]") each `every` percent: the
    compile takes many minutes and a silent build looks hung. On failure, BuildError with the log's tail."""
    shown = -every
    with (
        open(log, "w") as out,
        subprocess.Popen(
            [str(c) for c in cmd], env=ctx.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc,
    ):
        for line in proc.stdout:
            out.write(line)
            m = re.match(r"\[(\d+)/(\d+)\]", line)
            if m and int(m.group(1)) * 100 // int(m.group(2)) >= shown + every:
                shown = int(m.group(1)) * 100 // int(m.group(2))
                print(f"    compiled {m.group(1)}/{m.group(2)} ({shown}%)", flush=True)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise BuildError(f"compiling llama.cpp exited {proc.returncode} (whole log: {log})\n{tail}")


def has_amx(disassembly: str) -> bool:
    return any(re.search(rf"\b{m}\b", disassembly) for m in AMX_MNEMONICS)


def dpkg_versions(ctx: Context, root: Path, packages: list[str]) -> dict[str, str]:
    out = run(["chroot", root, "dpkg-query", "-W", "-f", "${Package}\\t${Version}\\n", *packages], ctx).stdout
    return dict(line.split("\t") for line in out.splitlines() if line)


def opened_backends(ld_debug: str) -> list[str]:
    """The CPU variants ggml dlopen()ed, from the dynamic loader's LD_DEBUG=files lines."""
    return sorted(set(re.findall(r"file=\S*libggml-cpu-([\w.]+?)\.so \[0\];\s+dynamically loaded", ld_debug)))


def variants_in(bin_dir: Path) -> list[str]:
    return sorted(m.group(1) for p in bin_dir.iterdir() if (m := re.fullmatch(r"libggml-cpu-(.+)\.so", p.name)))


def build_check(ctx: Context, base_squashfs: Path, tree: Path) -> dict:
    """On the base layer alone (the image's userland, no toolchain): every library resolves and llama-server runs
    and loads a CPU backend; the dropped variant is not there. Returns the variants and sizes for the meta."""
    bin_dir = tree / PREFIX / "bin"
    variants = variants_in(bin_dir)
    if any(v in variants for v in DROPPED_VARIANTS) or "x64" not in variants or "haswell" not in variants:
        raise BuildError(f"llama.cpp CPU variants built: {', '.join(variants)} (expected x64 ... haswell ...)")
    with nvidia.chroot(ctx, base_squashfs, ctx.work / "llama.cpp-check") as root:
        shutil.copytree(tree / PREFIX, root / PREFIX, symlinks=True)
        missing = sorted(
            {
                line.strip()
                for p in bin_dir.iterdir()
                for line in run(["chroot", root, "ldd", f"/{PREFIX}/bin/{p.name}"], ctx).stdout.splitlines()
                if "not found" in line
            }
        )
        if missing:
            raise BuildError(f"llama.cpp in the image would miss libraries: {'; '.join(missing)}")
        # The dynamic loader says which CPU backends ggml opened (dlopen by path, from the binary's directory):
        # llama-server's own log filters its "loaded CPU backend" line unless -lv is raised, so that is extra.
        command = [
            "chroot",
            root,
            "env",
            "LD_DEBUG=files",
            f"/{PREFIX}/bin/llama-server",
            "-lv",
            "4",
            "--list-devices",
        ]
        said = run(command, ctx)
        out = said.stdout + said.stderr
        opened = opened_backends(out)
        if not opened:
            raise BuildError(f"llama-server opened no CPU backend from /{PREFIX}/bin: {out[-800:]}")
    best = re.search(r"loaded CPU backend from \S*libggml-cpu-([\w.]+?)\.so", out)
    chosen = best.group(1) if best else "(not logged)"
    print(
        f"    llama-server runs on the base layer alone: probed {len(opened)} CPU backends, chose {chosen}",
        flush=True,
    )
    sizes = {p.name: p.stat().st_size for p in sorted(bin_dir.iterdir()) if not p.is_symlink()}
    return {"variants": variants, "files": sizes, "host_variant": chosen}
