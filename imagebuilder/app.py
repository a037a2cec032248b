"""App layer: the appliance and webui packages, the rootfs/ overlay, the image's runtime config, unit links.

It is small and built on the host without a chroot, so an app-only change rebuilds in seconds.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from imagebuilder import bytecode, layers, model, pyenv
from imagebuilder.context import BuildError, Context, hash_inputs, inputs_epoch

ORDER = 30
PACKAGES = ("appliance", "webui")
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc")
DATA_DIR = "srv/ocr"  # jobs, results, scan folders: the persistence union target, so it must exist in the image
SCAN_DIR = f"{DATA_DIR}/scan"  # `serve --scan` (the watcher makes inbox/outbox/... itself, on the persistent side)
LAUNCHER = """#!/usr/bin/python3
# The `appliance` command inside the image (the package is installed as plain files, without pip's launcher).
import sys
from appliance.cli import main
sys.exit(main())
"""


def units(ctx: Context) -> dict[str, str]:
    """{link path: target}: systemd enable/mask links, as files, so no chroot is needed."""
    c = ctx.config
    wants = "etc/systemd/system/multi-user.target.wants"
    gwants = "etc/systemd/system/graphical.target.wants"
    links = {
        f"{wants}/appliance-web.service": "/etc/systemd/system/appliance-web.service",
        f"{wants}/appliance-verify-medium.service": "/etc/systemd/system/appliance-verify-medium.service",
        # No login prompt anywhere: the templates behind every VT and serial getty are masked.
        "etc/systemd/system/getty@.service": "/dev/null",
        "etc/systemd/system/serial-getty@.service": "/dev/null",
        "etc/systemd/system/autovt@.service": "/dev/null",
        "etc/systemd/system/getty.target": "/dev/null",
        # Air-gapped: nothing may phone home on a timer.
        "etc/systemd/system/apt-daily.timer": "/dev/null",
        "etc/systemd/system/apt-daily-upgrade.timer": "/dev/null",
        "etc/systemd/system/apt-daily.service": "/dev/null",
        "etc/systemd/system/apt-daily-upgrade.service": "/dev/null",
    }
    if c.kiosk:
        links["etc/systemd/system/default.target"] = "/usr/lib/systemd/system/graphical.target"
        links[f"{gwants}/appliance-kiosk.service"] = "/etc/systemd/system/appliance-kiosk.service"
    if c.selftest:
        target = gwants if c.kiosk else wants
        links[f"{target}/appliance-selftest.service"] = "/etc/systemd/system/appliance-selftest.service"
    if c.gpu_stack:  # driver loading and the model server: each skips itself cleanly on a PC without a usable GPU
        links[f"{wants}/appliance-nvidia.service"] = "/etc/systemd/system/appliance-nvidia.service"
        links[f"{wants}/appliance-vllm.service"] = "/etc/systemd/system/appliance-vllm.service"
    if c.lan:
        links[f"{wants}/systemd-networkd.service"] = "/usr/lib/systemd/system/systemd-networkd.service"
        links["etc/systemd/system/sockets.target.wants/systemd-networkd.socket"] = \
            "/usr/lib/systemd/system/systemd-networkd.socket"
    return links


def generated(ctx: Context) -> dict[str, tuple[str, int]]:
    """{path: (text, mode)} made from the settings: runtime config, LAN drop-in and network, build info."""
    c = ctx.config
    files = {
        "etc/appliance/config.json": (json.dumps(c.image_config(), indent=1, sort_keys=True) + "\n", 0o644),
        "etc/appliance/build.json": (json.dumps({"name": c.name, "version": c.version, "profile": c.profile,
                                                 "source_date_epoch": inputs_epoch(ctx, *INPUTS)}, indent=1) + "\n", 0o644),
        "usr/local/bin/appliance": (LAUNCHER, 0o755),
    }
    if c.lan:
        # The token reaches the app through a root-only environment file, not a world-readable config or argv.
        files["etc/appliance/lan.env"] = (f"APPLIANCE_LAN_TOKEN={c.lan_token}\n", 0o600)
        files["etc/systemd/network/80-appliance-lan.network"] = (
            "# LAN mode: DHCP on wired ports, IPv4 only, no IPv6 autoconfiguration chatter.\n"
            "[Match]\nType=ether\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"
            "LLMNR=no\nMulticastDNS=no\n", 0o644)
    # The web unit's one command line takes these (rootfs/etc/systemd/system/appliance-web.service).
    host = "0.0.0.0" if c.lan else "127.0.0.1"
    env = f"APPLIANCE_ENGINE={c.engine}\nAPPLIANCE_HOST={host}\n"
    stack = ctx.info.get("stack")
    if stack:
        # appliance.gpu reads it at boot: which module flavours exist, whether they are signed, the CUDA version.
        built = ctx.info.get("nvidia") or {}
        info = stack.as_dict()
        info["driver"]["flavours"] = built.get("flavours", info["driver"]["flavours"])
        info["modules_signed"] = bool(built.get("signed"))
        info["kernel"] = built.get("kernel")
        files["etc/appliance/gpu-stack.json"] = (json.dumps(info, indent=1, sort_keys=True) + "\n", 0o644)
        env += f"APPLIANCE_MODEL=/{model.IMAGE_MODEL_DIR}\n"  # `appliance serve|ocr|vllm-server` default --model
    files["etc/appliance/appliance.env"] = (env, 0o644)
    return files


INPUTS = (*PACKAGES, "rootfs")


def app_key(ctx: Context) -> str:
    sources = [ctx.repo / p for p in PACKAGES] + [ctx.repo / "rootfs"]
    return hash_inputs("app", *sources, units(ctx), generated(ctx), ctx.config.python_version,
                       ctx.config.compression, inputs_epoch(ctx, *INPUTS), Path(__file__), Path(bytecode.__file__),
                       Path(ctx.files["passwd"]))


def build_app_layer(ctx: Context) -> str:
    def fill(tree: Path) -> dict:
        populate(ctx, tree)
        bytecode.compile_tree(ctx, tree, tree / pyenv.site_dir(ctx))
        return {"packages": list(PACKAGES)}

    layer = layers.cached_layer(ctx, "app", ORDER, app_key(ctx), inputs_epoch(ctx, *INPUTS))
    layers.reuse_or_build(ctx, layer, fill)
    return ("reused " if layer.cached else "built ") + layers.describe(layer)


def populate(ctx: Context, tree: Path) -> None:
    site = tree / pyenv.site_dir(ctx)
    site.mkdir(parents=True)
    for pkg in PACKAGES:
        src = ctx.repo / pkg
        if src.is_dir():
            shutil.copytree(src, site / pkg, ignore=SKIP)
    overlay = ctx.repo / "rootfs"
    if overlay.is_dir():
        shutil.copytree(overlay, tree, symlinks=True, dirs_exist_ok=True, ignore=shutil.ignore_patterns("README*"))
    for rel, (text, mode) in generated(ctx).items():
        p = tree / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(mode)
    for rel, target in units(ctx).items():
        p = tree / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.unlink(missing_ok=True)
        p.symlink_to(target)
    uid, gid = account(ctx, "ocr")
    owned = [tree / DATA_DIR, tree / SCAN_DIR]
    for d in owned:
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, uid, gid)
        d.chmod(0o750)
    # Directories on the squashfs must not override the base layer's modes (overlayfs takes the top one).
    for d in [tree, *[p for p in tree.rglob("*") if p.is_dir() and not p.is_symlink()]]:
        if d not in owned:
            d.chmod(0o755)


def account(ctx: Context, user: str) -> tuple[int, int]:
    """uid/gid of a base-layer account (the base stage saved its /etc/passwd beside the squashfs)."""
    for line in Path(ctx.files["passwd"]).read_text().splitlines():
        f = line.split(":")
        if f[0] == user:
            return int(f[2]), int(f[3])
    raise BuildError(f"account '{user}' is missing from the base layer")
