"""manifest.json (every deb, wheel, layer and input of the build) and SHA256SUMS.

The manifest holds what a rebuild needs (the commit, SOURCE_DATE_EPOCH, the settings, every Debian package and
wheel with its version and hash, the build host's tools) and nothing that varies from one build to the next: no
build time or duration, no host path, no "reused from the cache". Two builds of one commit write the same manifest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from appliance.files import copy_atomic, sha256_file, write_atomic
from imagebuilder import host
from imagebuilder.context import Context, git_commit, hash_inputs
from imagebuilder.settings import BY_NAME, Config

# Where this build's files go: the host's business, not the image's.
HOST_SIDE = ("out_dir", "cache_dir")


def recorded_settings(config: Config) -> dict:
    """The settings, secrets masked; a path setting (model directory, wheelhouse, driver source...) only as given
    or not: its location is this host's, its content is recorded by hash (model_files, wheels, nvidia)."""
    out = {}
    for name, value in config.as_dict().items():
        if name in HOST_SIDE:
            continue
        out[name] = ("(given)" if value else None) if BY_NAME[name].type == "path" else value
    out["profile"] = Path(out["profile"]).name  # a profile given as a file: its name, not where it lay
    return out


def host_tools() -> dict:
    """The Debian versions of the build host's tools that write the image's bytes (mksquashfs, xorriso, GRUB,
    mtools...), and pip's: a rebuild on another host needs the same ones for the same bytes."""
    packages = sorted({*host.TOOLS.values(), *host.FILES.values()})
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}\t${Version}\n", *packages], capture_output=True, text=True
    )
    versions = dict(line.split("\t", 1) for line in proc.stdout.splitlines() if "\t" in line)
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "--version"], capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"}
    ).stdout.split()
    versions["pip"] = pip[1] if len(pip) > 1 else None
    return {p: versions.get(p) for p in [*packages, "pip"]}


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
        "settings": recorded_settings(c),
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
                "epoch": layer.epoch,
            }
            for layer in sorted(ctx.layers, key=lambda x: x.order)
        ],
        "debs": ctx.info.get("debs", []),
        "wheels": ctx.info.get("wheels", []),
        "model_files": ctx.info.get("model_files", []),  # every weight file's path, size and sha256
        "host_tools": host_tools(),
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
    for key in ("iso", "usb_img", "ventoy_dat", "manifest", "model_license", "model_notice"):
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
