"""Bytecode for the image's Python, compiled at build time by the image's own interpreter.

Without .pyc files the web app compiles every module it imports at each boot (the image is read-only and the web
unit sets PYTHONDONTWRITEBYTECODE), which under emulation or on a slow PC costs tens of seconds. The host's Python
(3.11 here) cannot write 3.13 bytecode, so we run the base layer's python3.X on the host: just its stdlib, its
loader and the few libraries the interpreter links, extracted once and kept beside the base layer.
"""

from __future__ import annotations

from pathlib import Path

from imagebuilder.context import Context, remove_tree, run

IMAGE_PYTHON_FILES = [
    "usr/bin/python{v}",
    "usr/lib/python{v}",
    "usr/lib64",
    *[
        f"usr/lib/x86_64-linux-gnu/{lib}"
        for lib in ("ld-linux-x86-64.so.2", "libc.so.6", "libm.so.6", "libz.so.1*", "libexpat.so.1*")
    ],
]


def image_python(ctx: Context) -> list[str]:
    """A command that runs the base layer's python3.X on the host."""
    base = next(layer for layer in ctx.layers if layer.name == "base")
    v = ctx.config.python_version
    root = base.path.parent / "python"
    if not (root / "usr" / "bin" / f"python{v}").exists():
        partial = root.with_name("python.partial")
        remove_tree(partial)
        run(["unsquashfs", "-q", "-n", "-d", partial, base.path, *[f.format(v=v) for f in IMAGE_PYTHON_FILES]], ctx)
        partial.rename(root)
    libs = root / "usr" / "lib" / "x86_64-linux-gnu"
    # Started through the image's own loader and libc (so no -j for compileall: its workers would be started as
    # plain python3.X and get the host's libc); it finds its stdlib from its own path.
    return [
        str(libs / "ld-linux-x86-64.so.2"),
        "--library-path",
        str(libs),
        str(root / "usr" / "bin" / f"python{v}"),
        "-I",
    ]


def compile_tree(ctx: Context, tree: Path, folder: Path) -> None:
    """.pyc files for every .py under `folder` (inside the layer `tree`), named by their path in the image.
    unchecked-hash: trusted without comparing source timestamps, which squashfs rewrites anyway."""
    run(
        [
            *image_python(ctx),
            "-m",
            "compileall",
            "-q",
            "--invalidation-mode",
            "unchecked-hash",
            "-s",
            str(tree),
            "-p",
            "/",
            str(folder),
        ],
        ctx,
    )
