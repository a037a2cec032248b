"""Squashfs layers: each keyed by a hash of its inputs and kept in cache/layers/<name>-<key>/ for reuse.

live-boot mounts every image named in live/filesystem.module, in that order, lowest first, and stacks them with
overlayfs; so a layer holds only the files it adds. Changing app code changes only the app layer's key.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from appliance.files import sha256_file
from imagebuilder.context import BuildError, Context, Layer, remove_tree, run

ISO_FILE_LIMIT = 4 * 2**30  # ISO9660 level 3 handles more, but FAT32 copy-mode writers (Rufus, Ventoy) do not


def cached_layer(ctx: Context, name: str, order: int, key: str, epoch: int) -> Layer:
    """The layer for `key`: `cached` says whether a finished squashfs is already there."""
    d = ctx.layer_dir() / f"{name}-{key}"
    layer = Layer(name=name, order=order, key=key, path=d / "layer.squashfs", epoch=epoch)
    meta = d / "meta.json"
    if layer.path.exists() and meta.exists():
        layer.cached = True
        layer.meta = json.loads(meta.read_text())
        os.utime(d)  # "last used", for prune()
    return layer


def reuse_or_build(ctx: Context, layer: Layer, fill: Callable[[Path], dict], excludes: list[str] = ()) -> Layer:
    """Every layer stage's skeleton: a cached `layer` is reused; else `fill(tree)` fills a fresh temporary tree and
    returns the layer's meta, and the tree is squashed into the cache and removed, whatever happens. Either way the
    layer joins ctx.layers."""
    if not layer.cached:
        tree = ctx.work / f"{layer.name}-layer"
        ctx.layer_epoch = layer.epoch  # the tools that fill it date things by the layer's epoch (Context.env)
        try:
            finish_layer(ctx, layer, tree, fill(tree), excludes)
        finally:
            ctx.layer_epoch = None
            remove_tree(tree)
    ctx.layers.append(layer)
    return layer


def finish_layer(ctx: Context, layer: Layer, tree: Path, meta: dict, excludes: list[str] = ()) -> Layer:
    """Squash `tree` into the layer's cache dir (written under a temporary name, renamed when complete)."""
    d = layer.path.parent
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f"layer.squashfs.partial-{os.getpid()}"  # two builds sharing cache/ may make the same layer at once
    tmp.unlink(missing_ok=True)
    cmd = [
        "mksquashfs",
        tree,
        tmp,
        "-noappend",
        "-no-progress",
        "-quiet",
        "-comp",
        ctx.config.compression,
        "-b",
        "1M",
        "-processors",
        str(os.cpu_count() or 1),
        # SOURCE_DATE_EPOCH for the filesystem and every file (the variable alone only clamps newer files)
        "-mkfs-time",
        str(layer.epoch),
        "-all-time",
        str(layer.epoch),
    ]
    if excludes:
        cmd += ["-wildcards", "-e", *excludes]
    env = ctx.env()
    env.pop("SOURCE_DATE_EPOCH")  # mksquashfs refuses the variable together with the options above
    run(cmd, env=env)
    size = tmp.stat().st_size
    if size >= ISO_FILE_LIMIT:
        raise BuildError(
            f"layer {layer.name} is {size / 2**30:.1f} GiB: no file on the ISO may reach 4 GiB "
            "(FAT32 writers break); split it into more layers"
        )
    meta = {**meta, "key": layer.key, "epoch": layer.epoch, "size": size, "sha256": sha256_file(tmp)}
    (d / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    os.replace(tmp, layer.path)
    layer.meta = meta
    prune(ctx, layer)
    return layer


KEEP_DAYS = 7


def prune(ctx: Context, keep: Layer, versions: int = 2) -> None:
    """Drop old versions of a layer so the cache does not grow without bound: all but the newest few, and of those
    only ones unused for KEEP_DAYS (the cpu and gpu profiles' base layers differ; building one must not evict the
    other, which a concurrent build may be using)."""
    olds = sorted(
        (p for p in ctx.layer_dir().glob(f"{keep.name}-*") if p != keep.path.parent),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in olds[versions - 1 :]:
        if time.time() - old.stat().st_mtime > KEEP_DAYS * 86400:
            remove_tree(old)


def describe(layer: Layer) -> str:
    return f"{layer.filename} {layer.meta.get('size', 0) / 2**20:.1f} MiB key={layer.key}"


def pack(items: list[tuple[object, int]], budget: int) -> list[list]:
    """Split (item, size) pairs into groups of at most `budget` bytes (first fit, biggest first), so that each group's
    squashfs stays under the 4 GiB per-file limit. An item bigger than the budget gets a group of its own."""
    groups: list[tuple[int, list]] = []
    for item, size in sorted(items, key=lambda pair: (-pair[1], str(pair[0]))):
        for i, (used, members) in enumerate(groups):
            if used + size <= budget:
                groups[i] = (used + size, members + [item])
                break
        else:
            groups.append((size, [item]))
    return [sorted(members, key=str) for _, members in groups] or [[]]
