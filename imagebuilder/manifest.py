"""manifest.json (every deb, wheel, layer and input of the build) and SHA256SUMS."""

from __future__ import annotations

import json
import os

from appliance.files import copy_atomic, sha256_file, write_atomic
from imagebuilder.context import Context, git_commit, hash_inputs


def write_manifest(ctx: Context) -> str:
    iso = ctx.files["iso"]
    c = ctx.config
    manifest = {
        "schema": "appliance.build.manifest",
        "schema_version": 1,
        "name": c.name,
        "version": c.version,
        "profile": c.profile,
        "iso": {"file": iso.name, "size": iso.stat().st_size, "sha256": sha256_file(iso)},
        "source_date_epoch": ctx.epoch,
        "git": git_commit(ctx.repo),
        "settings": c.as_dict(),  # secrets masked
        "inputs": {
            "package_lists": {
                name: hash_inputs(ctx.repo / "build" / "packages" / f"{name}.list") for name in c.package_lists
            },
            "pyproject": hash_inputs(ctx.repo / "pyproject.toml"),
            "rootfs_overlay": hash_inputs(ctx.repo / "rootfs"),
        },
        "kernel": ctx.info.get("kernel"),
        "layers": [
            {
                "file": layer.filename,
                "name": layer.name,
                "key": layer.key,
                "size": layer.meta.get("size"),
                "sha256": layer.meta["sha256"],
                "reused": layer.cached,
            }
            for layer in sorted(ctx.layers, key=lambda x: x.order)
        ],
        "debs": ctx.info.get("debs", []),
        "wheels": ctx.info.get("wheels", []),
        "model_files": ctx.info.get("model_files", []),  # every weight file's path, size and sha256
    }
    stack = ctx.info.get("stack")
    if stack:  # gpu profile: the resolved versions and the modules built
        manifest["gpu_stack"] = {**stack.as_dict(), "nvidia_modules": ctx.info.get("nvidia")}
    if ctx.info.get("model_identity"):  # the bundled model's identity (and its GGUF files' origin)
        manifest["model"] = ctx.info["model_identity"]
    if ctx.info.get("llamacpp"):  # the llama.cpp layer: sdist, toolchain, CPU variants
        manifest["llamacpp"] = ctx.info["llamacpp"]
    # Named after the image, like the ISO: a cpu and a gpu build in one out/ folder keep one manifest each.
    path = ctx.work / f"{ctx.stem}.manifest.json"
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    ctx.files["manifest"] = path
    return f"{len(manifest['debs'])} debs, {len(manifest['wheels'])} wheels, {len(manifest['layers'])} layers"


def publish(ctx: Context) -> str:
    """Move the finished files into out/ (renames on one filesystem), then rewrite SHA256SUMS.

    Nothing reaches out/ before every earlier stage succeeded; a file appears there whole or not at all.
    """
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    done = []
    for key in ("iso", "usb_img", "manifest", "model_license", "model_notice"):
        src = ctx.files.get(key)
        if src:
            dst = ctx.out_dir / src.name
            try:
                os.replace(src, dst)
            except OSError:  # out/ on another filesystem: copy beside, then rename
                copy_atomic(src, dst)
            done.append(dst)
    sums = ctx.out_dir / "SHA256SUMS"
    # One SHA256SUMS for the folder: keep lines of other images still present, refresh ours.
    lines = {}
    if sums.exists():
        for line in sums.read_text().splitlines():
            digest, _, name = line.partition("  ")
            if name and (ctx.out_dir / name).exists():
                lines[name] = digest
    for p in done:
        lines[p.name] = sha256_file(p)
    write_atomic(sums, "".join(f"{d}  {n}\n" for n, d in sorted(lines.items())).encode())
    return ", ".join(str(p.relative_to(ctx.repo) if p.is_relative_to(ctx.repo) else p) for p in done) + ", SHA256SUMS"
