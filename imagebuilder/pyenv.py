"""Python layer: the app's dependencies as wheels for the IMAGE's Python (3.13), not the build host's.

Why wheels and not Debian's python3-* packages: rapidocr and onnxruntime are not in Debian, and mixing Debian's
numpy with PyPI's onnxruntime/opencv wheels invites ABI mismatches; one resolver for the whole set is simpler.
pip installs the binary wheels for the target (--python-version/--platform) into a plain directory on the host,
so this stage needs no chroot. Wheels are kept in cache/wheels; `wheelhouse` makes the build fully offline.
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from functools import partial
from pathlib import Path

from appliance.files import sha256_file
from imagebuilder import bytecode, layers
from imagebuilder.context import BuildError, Context, hash_inputs, inputs_epoch, remove_tree, run

ORDER = 10
# glibc 2.41 in trixie: every manylinux tag up to 2_41 is loadable. pip matches explicit --platform tags exactly
# (no implied older glibc), so each minor is listed: vLLM 0.12-0.18 ship manylinux_2_31 wheels only.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(41, 16, -1)] + ["manylinux2014_x86_64", "linux_x86_64"]
# Not needed at run time: the CLI's console scripts of dependencies, tests and headers inside wheels.
PRUNE = ["bin", "*/tests", "*/include"]


def site_dir(ctx: Context) -> str:
    """Debian's python3 has /usr/local/lib/python3.X/dist-packages on sys.path: no venv, no .pth needed."""
    return f"usr/local/lib/python{ctx.config.python_version}/dist-packages"


def requirements(ctx: Context) -> list[str]:
    """pyproject.toml's dependencies plus the extras the profile names (the single source of pins)."""
    project = tomllib.loads((ctx.repo / "pyproject.toml").read_text())["project"]
    reqs = list(project.get("dependencies", []))
    extras = project.get("optional-dependencies", {})
    for extra in ctx.config.python_extras:
        if extra not in extras:
            raise BuildError(f"python_extras: '{extra}' is not an extra of pyproject.toml ({', '.join(extras)})")
        reqs += [r for r in extras[extra] if r not in reqs]
    stack = ctx.info.get("stack")
    if stack:  # gpu profile: the checked vLLM/torch/transformers pins, resolved together with the app's needs
        reqs += stack.requirements()
    return reqs


def target_args(ctx: Context) -> list[str]:
    return python_target(ctx.config.python_version)


def python_target(pv: str) -> list[str]:
    """pip's options for the image's Python `pv` (e.g. 3.13) on x86-64 Linux, whatever Python runs pip."""
    args = [
        "--python-version",
        pv,
        "--implementation",
        "cp",
        "--only-binary=:all:",
        "--abi",
        f"cp{pv.replace('.', '')}",
        "--abi",
        "abi3",
        "--abi",
        "none",
    ]
    for p in PLATFORMS:
        args += ["--platform", p]
    return args


INPUTS = ("pyproject.toml", "imagebuilder/pyenv.py")


def python_key(ctx: Context) -> str:
    wheelhouse = sorted(p.name for p in Path(ctx.config.wheelhouse).glob("*.whl")) if ctx.config.wheelhouse else []
    return hash_inputs(
        "python",
        requirements(ctx),
        target_args(ctx),
        wheelhouse,
        PRUNE,
        ctx.config.compression,
        inputs_epoch(ctx, *INPUTS),
        Path(__file__),
    )


# Wheel bytes per layer: with the GPU stack (torch, vLLM, ~3 GB of CUDA wheels) one squashfs would pass 4 GiB, so
# the set is split into parts (python, python2, ...) that live-boot stacks into one site-packages.
PART_BUDGET = 3 * 2**30


def build_python_layer(ctx: Context) -> str:
    key, epoch = python_key(ctx), inputs_epoch(ctx, *INPUTS)

    def part(i: int) -> layers.Layer:
        return layers.cached_layer(ctx, "python" if i == 0 else f"python{i + 1}", ORDER + i, key, epoch)

    first = part(0)
    count = first.meta.get("parts", 1)
    reuse = all(p.cached for p in [first] + [part(i) for i in range(1, count)])
    groups = [[]] * count if reuse else layers.pack([(f, f.stat().st_size) for f in download(ctx)], PART_BUDGET)

    def fill(group: list[Path], tree: Path) -> dict:
        wheels = install(ctx, group, tree / site_dir(ctx))
        return {"wheels": wheels, "requirements": requirements(ctx), "parts": len(groups)}

    parts = []
    for i, group in enumerate(groups):
        layer = part(i)
        layer.cached = reuse  # a new download is a new resolution: every part is made from it, none kept
        parts.append(layers.reuse_or_build(ctx, layer, partial(fill, group)))
    ctx.info["wheels"] = sorted((w for p in parts for w in p.meta["wheels"]), key=lambda w: w["name"].lower())
    return (
        ("reused " if all(p.cached for p in parts) else "built ")
        + "; ".join(layers.describe(p) for p in parts)
        + f", {len(ctx.info['wheels'])} wheels"
    )


def download(ctx: Context) -> list[Path]:
    """Resolve the whole set once, for the target Python, into a fresh folder; keep the wheels in cache/wheels."""
    chosen = ctx.work / "wheels"
    cache = ctx.cache_dir / "wheels"
    cache.mkdir(parents=True, exist_ok=True)
    if ctx.config.wheelhouse:
        source = ["--no-index", "--find-links", str(Path(ctx.config.wheelhouse).resolve())]
    else:  # the index, but wheels already in the cache are taken from there
        source = ["--find-links", str(cache)]
    # pip download honours --python-version for Requires-Python; pip install on the host would not.
    run([*PIP, "download", "-q", "-d", chosen, *target_args(ctx), *source, *requirements(ctx)], ctx)
    files = sorted(chosen.glob("*.whl"))
    for f in files:
        if not (cache / f.name).exists():
            shutil.copy2(f, cache / f.name)
    return files


PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]


def install(ctx: Context, files: list[Path], site: Path) -> list[dict]:
    """Unpack exactly these wheels into `site` (no resolving: download() did that for the whole set)."""
    unpack(ctx, files, site)
    bytecode.compile_tree(ctx, site.parents[len(Path(site_dir(ctx)).parts) - 1], site)
    wheels = []
    for f in files:
        name, version = f.name.split("-")[:2]
        wheels.append({"name": name, "version": version, "file": f.name, "sha256": sha256_file(f)})
    return sorted(wheels, key=lambda w: w["name"].lower())


def unpack(ctx: Context, files: list[Path], site: Path) -> None:
    """pip's install of the wheel files into `site`, pruned, without the record of where the files lay."""
    # --no-compile: the host's Python would write .pyc files for the wrong version; the image's own Python
    # compiles them once the tree is pruned (bytecode.py).
    run(
        [
            *PIP,
            "install",
            "-q",
            "--no-deps",
            "--ignore-requires-python",
            "--no-compile",
            "--target",
            site,
            *target_args(ctx),
            *files,
        ],
        ctx,
    )
    drop_direct_urls(site)
    for pattern in PRUNE:
        for p in site.glob(pattern):
            if p.is_dir():
                remove_tree(p)


def drop_direct_urls(site: Path) -> None:
    """pip writes <dist>.dist-info/direct_url.json (PEP 610) for every install from a file: that file's URL, here
    the build's work folder (this host's path, the build's date and pid), so every build differed. pip has no switch
    to leave it out, so it goes here, with its line in RECORD: the image then says what an install from the index
    says (name and version; the wheel files and their hashes are in the build manifest)."""
    for url_file in sorted(site.glob("*.dist-info/direct_url.json")):
        record = url_file.parent / "RECORD"
        if record.exists():
            entry = f"{url_file.parent.name}/direct_url.json,"
            lines = record.read_text().splitlines(keepends=True)
            record.write_text("".join(line for line in lines if not line.startswith(entry)))
        url_file.unlink()
