"""NVIDIA driver layer (gpu profile): kernel modules built by DKMS for the image's exact kernel, plus the driver's
user-space (libcuda, NVML, nvidia-smi) and GSP firmware.

Each module flavour (open, proprietary) is built in its own throwaway chroot: the base layer's squashfs under an
overlay, where apt installs linux-headers-<the image's kernel> and the flavour's -dkms package, whose postinst makes
DKMS build the modules. Only the .ko files leave that chroot, into usr/lib/appliance/nvidia/<flavour>/: the two
flavours have the same module names, and compilers and headers (~850 MiB) have no place in the image. At boot,
appliance-nvidia.service links the flavour the card needs (appliance.gpu.module_flavour, by PCI ID) into
/lib/modules and loads it.

The runtime packages are installed in one more overlay whose upper directory IS the layer: dpkg's database in the
image then lists them, and nothing else of the base changes. Facts: ../shared/reference/image-facts.md (NVIDIA).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from pathlib import Path

from appliance.files import sha256_file
from imagebuilder import layers, rootfs
from imagebuilder.context import BuildError, Context, hash_inputs, inputs_epoch, remove_tree, run
from imagebuilder.stack import Driver, _driver_debs

ORDER = 5  # right above the base OS: it is OS-level (modules, firmware, libcuda), below the Python layers
MODULE_DIR = "usr/lib/appliance/nvidia"  # <flavour>/*.ko*; read by rootfs/usr/local/lib/appliance/nvidia-load
# The driver's user space that CUDA wheels (torch, vLLM) need from the system: libcuda and NVML, nvidia-smi for
# the card's memory, GSP firmware (required by the open modules, used by the proprietary ones on newer cards).
RUNTIME_PACKAGES = ("libcuda1", "libnvidia-ml1", "nvidia-smi", "firmware-nvidia-gsp")
DEBIAN_DKMS = {"proprietary": "nvidia-kernel-dkms"}  # Debian's 550 offers only this flavour for trixie's kernel
# The compute path never uses nouveau; it would grab the card before the NVIDIA modules load.
MODPROBE_CONF = "etc/modprobe.d/appliance-nvidia.conf"
MODPROBE_TEXT = (
    "# gpu profile: the NVIDIA modules drive the card, never nouveau\nblacklist nouveau\noptions nouveau modeset=0\n"
)
REPO_IN_CHROOT = "var/lib/appliance-nvidia-repo"  # the user's .debs, as a flat apt repository, while building
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "APT_LISTCHANGES_FRONTEND": "none"}


def dkms_packages(driver: Driver) -> dict[str, str]:
    """{flavour: package} that builds that flavour's modules from this driver source."""
    if driver.source == "debian":
        return dict(DEBIAN_DKMS)
    return {flavour: package for package, (_, flavour) in sorted(_driver_debs(driver.path).items())}


def sign_key_files(ctx: Context) -> tuple[Path, Path] | None:
    """(mok.key, mok.pub) of the site's signing key (nvidia_sign_key), or None: unsigned modules."""
    if not ctx.config.nvidia_sign_key:
        return None
    d = Path(ctx.config.nvidia_sign_key).expanduser()
    key, pub = d / "mok.key", d / "mok.pub"
    missing = [p.name for p in (key, pub) if not p.is_file()]
    if missing:
        raise BuildError(
            f"nvidia_sign_key: {d} lacks {', '.join(missing)}: give a directory with the site's MOK "
            "private key (mok.key, PEM) and certificate (mok.pub, DER), DKMS's own file names"
        )
    return key, pub


INPUTS = ("imagebuilder/nvidia.py",)


def driver_key(ctx: Context, base_key: str) -> str:
    stack = ctx.info["stack"]
    debs = []
    if stack.driver.source == "deb-dir":
        debs = [(p.name, p.stat().st_size) for p in sorted(stack.driver.path.glob("*.deb"))]
    keys = sign_key_files(ctx)
    return hash_inputs(
        "nvidia",
        base_key,
        stack.as_dict()["driver"],
        debs,
        RUNTIME_PACKAGES,
        MODPROBE_TEXT,
        sha256_file(keys[1]) if keys else None,
        ctx.config.compression,
        inputs_epoch(ctx, *INPUTS),
        Path(__file__),
    )


def build_driver_layer(ctx: Context) -> str:
    base = next(layer for layer in ctx.layers if layer.name == "base")
    kernel = ctx.info["kernel"]
    layer = layers.cached_layer(ctx, "nvidia", ORDER, driver_key(ctx, base.key), inputs_epoch(ctx, *INPUTS))
    layers.reuse_or_build(ctx, layer, lambda tree: populate(ctx, base.path, kernel, tree), rootfs.SQUASH_EXCLUDES)
    ctx.info["debs"] = ctx.info.get("debs", []) + layer.meta["debs"]
    ctx.info["nvidia"] = {k: layer.meta[k] for k in ("kernel", "flavours", "modules", "signed")}
    return (
        ("reused " if layer.cached else "built ")
        + layers.describe(layer)
        + f", modules for {kernel}: {', '.join(layer.meta['flavours'])}"
    )


def populate(ctx: Context, base_squashfs: Path, kernel: str, tree: Path) -> dict:
    stack = ctx.info["stack"]
    packages = dkms_packages(stack.driver)
    if not packages:
        raise BuildError(f"{stack.driver.describe()}, but no kernel module package for it was found")
    modules: dict[str, list[str]] = {}
    for flavour, package in packages.items():
        with chroot(ctx, base_squashfs, ctx.work / f"dkms-{flavour}") as root:
            keys = sign_key_files(ctx)
            if keys:  # DKMS signs with /var/lib/dkms/mok.key; without it, it makes a throwaway key (never shipped)
                (root / "var/lib/dkms").mkdir(parents=True, exist_ok=True)
                for src in keys:
                    shutil.copyfile(src, root / "var/lib/dkms" / src.name)
            apt_install(ctx, root, [f"linux-headers-{kernel}", package])
            # DKMS installs under updates/ (the kernel's own tree has nvidia-wmi-ec-backlight: not ours)
            built = sorted((root / "lib/modules" / kernel / "updates").rglob("nvidia*.ko*"))
            if not built:
                log = "\n".join(p.read_text(errors="replace")[-2000:] for p in root.glob("var/lib/dkms/**/make.log"))
                raise BuildError(
                    f"{package} installed but DKMS built no module for kernel {kernel} ({flavour} "
                    f"flavour); pin kernel, headers and driver together.\n{log}"
                )
            dest = tree / MODULE_DIR / flavour
            dest.mkdir(parents=True, exist_ok=True)
            for ko in built:
                shutil.copy2(ko, dest / ko.name)
            modules[flavour] = [ko.name for ko in built]
            # modinfo from the image's own kmod: the modules must be for exactly the image's kernel
            inside = "/" + str(built[0].relative_to(root))
            vermagic = run(["chroot", root, "modinfo", "-F", "vermagic", inside], ctx).stdout.strip()
            if vermagic.split()[0] != kernel:
                raise BuildError(f"{built[0].name} was built for {vermagic.split()[0]}, not the image's {kernel}")
            signer = run(["chroot", root, "modinfo", "-F", "signer", inside], ctx).stdout.strip()
            print(
                f"    {flavour}: {len(built)} modules for {kernel}"
                + (f", signed by {signer or 'nobody'}" if keys else ""),
                flush=True,
            )
    with chroot(ctx, base_squashfs, ctx.work / "nvidia-runtime", upper=tree) as root:
        apt_install(ctx, root, list(RUNTIME_PACKAGES))
        out = run(
            [
                "chroot",
                root,
                "dpkg-query",
                "-W",
                "-f",
                "${Package}\\t${Version}\\t${Architecture}\\n",
                *RUNTIME_PACKAGES,
            ],
            ctx,
        ).stdout
    (tree / MODPROBE_CONF).parent.mkdir(parents=True, exist_ok=True)
    (tree / MODPROBE_CONF).write_text(MODPROBE_TEXT)
    keys = sign_key_files(ctx)
    if keys:  # the certificate (public) for `mokutil --import` on the target PCs; the private key stays out
        shutil.copyfile(keys[1], tree / MODULE_DIR / "mok.der")
    info = {
        "kernel": kernel,
        "flavours": sorted(modules),
        "modules": modules,
        "signed": bool(keys),
        "driver": stack.driver.version,
    }
    (tree / MODULE_DIR / "build.json").write_text(json.dumps(info, indent=1) + "\n")
    debs = [dict(zip(("package", "version", "arch"), line.split("\t"))) for line in out.splitlines() if line]
    return {**info, "debs": debs}


@contextlib.contextmanager
def chroot(ctx: Context, base_squashfs: Path, work: Path, upper: Path | None = None):
    """The base layer, writable through an overlay (changes land in `upper`), with /proc, /sys, /dev, DNS and the
    apt cache (cache/debs, shared with mmdebstrap) mounted; everything is unmounted and scrubbed on the way out."""
    lower, root, ovl_work = work / "lower", work / "root", work / "ovl-work"
    upper = upper or work / "upper"
    for d in (lower, root, ovl_work, upper):
        d.mkdir(parents=True, exist_ok=True)
    debs = ctx.cache_dir / "debs"
    (debs / "partial").mkdir(parents=True, exist_ok=True)
    mounted: list[Path] = []

    def mount(*args, target: Path) -> None:
        run(["mount", *args, target], ctx)
        mounted.append(target)

    added = ["etc/resolv.conf", "usr/sbin/policy-rc.d"]
    try:
        mount("-t", "squashfs", "-o", "loop,ro", base_squashfs, target=lower)
        mount("-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={ovl_work}", target=root)
        for fs, where in (("proc", "proc"), ("sysfs", "sys")):
            mount("-t", fs, fs, target=root / where)
        mount("--rbind", "/dev", target=root / "dev")
        mount("--bind", debs, target=root / "var/cache/apt/archives")
        shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
        policy = root / "usr/sbin/policy-rc.d"  # no service starts inside the chroot
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        yield root
    finally:
        for rel in added:
            with contextlib.suppress(OSError):
                (root / rel).unlink()
        for target in reversed(mounted):
            subprocess.run(["umount", "-l", str(target)], check=False)
        for rel in added:  # the overlay is gone: drop what the files left in the upper dir (or their whiteouts)
            p = upper / rel
            if p.exists() or p.is_char_device():
                p.unlink()
        remove_tree(lower)
        remove_tree(ovl_work)
        if upper == work / "upper":
            remove_tree(work)


def apt_install(ctx: Context, root: Path, packages: list[str]) -> None:
    """apt-get install in the chroot from the base's Debian sources, plus the user's .deb directory if given."""
    stack = ctx.info.get("stack")  # None: a chroot for another layer (llama.cpp), the base's Debian sources only
    lists = root / "etc/apt/sources.list.d/appliance-nvidia.list"
    repo = root / REPO_IN_CHROOT
    if stack and stack.driver.source == "deb-dir":
        flat_repo(stack.driver.path, repo)
        lists.write_text(f"deb [trusted=yes] file:/{REPO_IN_CHROOT} ./\n")
    env = {**ctx.env(), **APT_ENV, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    try:
        run(["chroot", root, "apt-get", "update", "-q"], env=env)
        run(["chroot", root, "apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], env=env)
    except BuildError as e:
        raise BuildError(
            f"installing {', '.join(packages)} in the image's chroot failed"
            + (f" (from {stack.driver.describe()}; kernel {ctx.info['kernel']})" if stack else "")
            + f": {e}"
        ) from None
    finally:
        lists.unlink(missing_ok=True)
        remove_tree(repo)
        for p in (root / "var/lib/apt/lists").glob("*"):  # the indexes are dead weight in the image
            if p.is_file():
                p.unlink()


def flat_repo(source: Path, repo: Path) -> None:
    """The user's .deb packages as a flat apt repository (Packages index with Filename, Size, SHA256)."""
    repo.mkdir(parents=True, exist_ok=True)
    entries = []
    for deb in sorted(source.glob("*.deb")):
        shutil.copyfile(deb, repo / deb.name)
        control = run(["dpkg-deb", "-f", deb]).stdout.rstrip("\n")
        entries.append(f"{control}\nFilename: ./{deb.name}\nSize: {deb.stat().st_size}\nSHA256: {sha256_file(deb)}\n")
    (repo / "Packages").write_text("\n".join(entries))
