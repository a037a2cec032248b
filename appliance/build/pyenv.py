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
from pathlib import Path

from appliance.build import layers
from appliance.build.context import BuildError, Context, hash_inputs, inputs_epoch, remove_tree, run
from appliance.files import sha256_file

ORDER = 10
# glibc 2.41 in trixie: every manylinux tag up to 2_39 is loadable.
PLATFORMS = ["manylinux_2_39_x86_64", "manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "linux_x86_64"]
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
    return reqs


def target_args(ctx: Context) -> list[str]:
    pv = ctx.config.python_version
    args = ["--python-version", pv, "--implementation", "cp", "--only-binary=:all:",
            "--abi", f"cp{pv.replace('.', '')}", "--abi", "abi3", "--abi", "none"]
    for p in PLATFORMS:
        args += ["--platform", p]
    return args


INPUTS = ("pyproject.toml", "appliance/build/pyenv.py")


def python_key(ctx: Context) -> str:
    wheelhouse = sorted(p.name for p in Path(ctx.config.wheelhouse).glob("*.whl")) if ctx.config.wheelhouse else []
    return hash_inputs("python", requirements(ctx), target_args(ctx), wheelhouse, PRUNE, ctx.config.compression,
                       inputs_epoch(ctx, *INPUTS), Path(__file__))


def build_python_layer(ctx: Context) -> str:
    layer = layers.cached_layer(ctx, "python", ORDER, python_key(ctx), inputs_epoch(ctx, *INPUTS))
    if not layer.cached:
        tree = ctx.work / "python-layer"
        try:
            wheels = install(ctx, tree / site_dir(ctx))
            layers.finish_layer(ctx, layer, tree, {"wheels": wheels, "requirements": requirements(ctx)})
        finally:
            remove_tree(tree)
    ctx.layers.append(layer)
    ctx.info["wheels"] = layer.meta["wheels"]
    return ("reused " if layer.cached else "built ") + layers.describe(layer) + f", {len(layer.meta['wheels'])} wheels"


def install(ctx: Context, site: Path) -> list[dict]:
    """Resolve for the target Python into a fresh folder, then unpack exactly those wheels into `site`."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    chosen = ctx.work / "wheels"
    cache = ctx.cache_dir / "wheels"
    cache.mkdir(parents=True, exist_ok=True)
    if ctx.config.wheelhouse:
        source = ["--no-index", "--find-links", str(Path(ctx.config.wheelhouse).resolve())]
    else:  # the index, but wheels already in the cache are taken from there
        source = ["--find-links", str(cache)]
    # pip download honours --python-version for Requires-Python; pip install on the host would not.
    run([*pip, "download", "-q", "-d", chosen, *target_args(ctx), *source, *requirements(ctx)], ctx)
    files = sorted(chosen.glob("*.whl"))
    for f in files:
        if not (cache / f.name).exists():
            shutil.copy2(f, cache / f.name)
    # --no-compile: the host's Python would write .pyc files for the wrong version.
    run([*pip, "install", "-q", "--no-deps", "--ignore-requires-python", "--no-compile", "--target", site,
         *target_args(ctx), *files], ctx)
    for pattern in PRUNE:
        for p in site.glob(pattern):
            if p.is_dir():
                remove_tree(p)
    wheels = []
    for f in files:
        name, version = f.name.split("-")[:2]
        wheels.append({"name": name, "version": version, "file": f.name, "sha256": sha256_file(f)})
    return sorted(wheels, key=lambda w: w["name"].lower())
