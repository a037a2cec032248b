"""Base layer: a Debian rootfs from mmdebstrap with the kernel, live-boot, systemd, Python and the kiosk stack."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from imagebuilder import layers
from imagebuilder.context import BuildError, Context, hash_inputs, inputs_epoch, run

ORDER = 0
# Dropped at unpack time (dpkg path-exclude): man pages, docs except licences, translations.
DPKG_EXCLUDES = [
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
]
# Kernel and initrd sit on the ISO next to the layers; apt's caches are dead weight in a read-only image.
SQUASH_EXCLUDES = [
    "boot/vmlinuz*",
    "boot/initrd.img*",
    "var/cache/apt/*.bin",
    "var/cache/apt/archives/*.deb",
    "var/lib/apt/lists/*_Packages",
    "var/lib/apt/lists/*_InRelease",
    "var/log/*",
]
# mmdebstrap copies the build host's /etc/resolv.conf and /etc/hostname into the rootfs (as debootstrap does): the
# image would carry the host's name server and differ from host to host. Fixed contents instead (0644).
FIXED_FILES = {
    "etc/hostname": "ocr-appliance\n",
    "etc/hosts": "127.0.0.1 localhost\n127.0.1.1 ocr-appliance\n::1 localhost ip6-localhost ip6-loopback\n",
    "etc/resolv.conf": "# No name server: the appliance resolves no names (offline; in LAN mode it only serves).\n",
}
# Accounts: `ocr` runs the web app and owns /srv/ocr, `kiosk` runs Xorg + Chromium. root stays locked.
CUSTOMIZE = """
set -e
useradd --system --user-group --home-dir /srv/ocr --no-create-home --shell /usr/sbin/nologin ocr
useradd --create-home --user-group --shell /usr/sbin/nologin --groups video,render,input,audio kiosk
usermod --password '!*' root  # locked: no password can match
# SANE: sane-airscan's eSCL backend supersedes SANE's own `escl` (which would list each network scanner twice);
# `net` (scanners shared by other machines' saned) is not for an appliance that contacts nobody.
sed -i -e 's/^escl$/#escl  (sane-airscan: airscan)/' -e 's/^net$/#net  (the appliance contacts nobody)/' \
    /etc/sane.d/dll.conf
"""


def package_list(ctx: Context) -> list[str]:
    """Packages from build/packages/<list>.list (comments and blank lines ignored) plus the `packages` setting."""
    pkgs: list[str] = []
    for name in ctx.config.package_lists:
        path = ctx.repo / "build" / "packages" / f"{name}.list"
        if not path.is_file():
            raise BuildError(f"package_lists: {name}: no such list {path}")
        for line in path.read_text().splitlines():
            word = line.split("#", 1)[0].strip()
            if word and word not in pkgs:
                pkgs.append(word)
    return pkgs + [p for p in ctx.config.packages if p not in pkgs]


def sources(ctx: Context) -> list[str]:
    c = ctx.config
    comps = " ".join(c.components)
    lines = [f"deb {c.mirror} {c.suite} {comps}", f"deb {c.mirror} {c.suite}-updates {comps}"]
    if c.security_mirror:
        lines.append(f"deb {c.security_mirror} {c.suite}-security {comps}")
    return lines


# Paths whose last commit gives the layer's timestamps (and so its key). Not build/profiles: the settings that
# matter (packages, suite, mirrors) are in the key already, and a new or edited profile must not rebuild this layer.
INPUTS = ("build/packages", "imagebuilder/rootfs.py")


def base_key(ctx: Context) -> str:
    c = ctx.config
    return hash_inputs(
        "base",
        c.suite,
        sources(ctx),
        package_list(ctx),
        DPKG_EXCLUDES,
        SQUASH_EXCLUDES,
        FIXED_FILES,
        CUSTOMIZE,
        c.compression,
        inputs_epoch(ctx, *INPUTS),
        Path(__file__),
    )


def build_base_layer(ctx: Context) -> str:
    layer = layers.cached_layer(ctx, "base", ORDER, base_key(ctx), inputs_epoch(ctx, *INPUTS))

    def fill(root: Path) -> dict:
        bootstrap(ctx, root)
        customize(ctx, root)
        return collect(ctx, root, layer.path.parent)

    layers.reuse_or_build(ctx, layer, fill, SQUASH_EXCLUDES)
    d = layer.path.parent
    ctx.files.update(kernel=d / "vmlinuz", initrd=d / "initrd.img", passwd=d / "passwd", group=d / "group")
    ctx.info["debs"] = layer.meta["debs"]
    ctx.info["kernel"] = layer.meta["kernel"]
    return ("reused " if layer.cached else "built ") + layers.describe(layer)


def bootstrap(ctx: Context, root: Path) -> None:
    debs = ctx.cache_dir / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    cmd = [
        "mmdebstrap",
        "--mode=root",
        "--variant=minbase",
        f"--components={','.join(ctx.config.components)}",
        '--aptopt=APT::Install-Recommends "false"',  # also stays in the image: later apt runs add no Recommends
        *[f"--dpkgopt={x}" for x in DPKG_EXCLUDES],
        f"--include={','.join(package_list(ctx))}",
        # .debs kept in cache/debs between builds (sync-in before, sync-out after): no re-download
        "--skip=essential/unlink",
        '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
        f"--setup-hook=sync-in {debs} /var/cache/apt/archives/",
        f"--customize-hook=sync-out /var/cache/apt/archives {debs}",
        ctx.config.suite,
        root,
        *sources(ctx),
    ]
    print(f"    mmdebstrap {ctx.config.suite}: {len(package_list(ctx))} packages asked for", flush=True)
    run(cmd, ctx)


def customize(ctx: Context, root: Path) -> None:
    write_fixed_files(root)
    run(["chroot", root, "/bin/sh", "-c", CUSTOMIZE], ctx)
    if not list(root.glob("usr/lib/live/boot/*")) and not list(root.glob("lib/live/boot/*")):
        raise BuildError("live-boot is not installed in the rootfs (package list 'base' must include it)")


def write_fixed_files(root: Path) -> None:
    for rel, text in FIXED_FILES.items():
        path = root / rel
        path.unlink(missing_ok=True)  # a link, or the host's file with the host's mode
        path.write_text(text)
        path.chmod(0o644)


def collect(ctx: Context, root: Path, dest: Path) -> dict:
    """Kernel, initrd, accounts and the package list go beside the squashfs for the later stages."""
    dest.mkdir(parents=True, exist_ok=True)
    kernels = sorted(root.glob("boot/vmlinuz-*"))
    if len(kernels) != 1:
        raise BuildError(f"expected one kernel in the rootfs, found {[k.name for k in kernels]}")
    version = kernels[0].name.removeprefix("vmlinuz-")
    initrd = root / "boot" / f"initrd.img-{version}"
    if not initrd.exists():
        raise BuildError(f"no initrd for kernel {version}")
    listing = run(["chroot", root, "lsinitramfs", f"/boot/initrd.img-{version}"], ctx).stdout
    if "scripts/live" not in listing:
        raise BuildError("the initrd has no live-boot scripts (live-boot-initramfs-tools missing?)")
    shutil.copy2(kernels[0], dest / "vmlinuz")
    shutil.copy2(initrd, dest / "initrd.img")
    for name in ("passwd", "group"):
        shutil.copy2(root / "etc" / name, dest / name)
    out = run(["chroot", root, "dpkg-query", "-W", "-f", "${Package}\\t${Version}\\t${Architecture}\\n"], ctx).stdout
    debs = [dict(zip(("package", "version", "arch"), line.split("\t"))) for line in out.splitlines() if line]
    python = run(["chroot", root, "python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], ctx)
    if python.stdout.strip() != ctx.config.python_version:
        raise BuildError(
            f"the image's Python is {python.stdout.strip()} but python_version is "
            f"{ctx.config.python_version}: set python_version to match the suite"
        )
    (dest / "debs.json").write_text(json.dumps(debs, indent=0))
    return {"debs": debs, "kernel": version, "packages_asked": package_list(ctx)}
