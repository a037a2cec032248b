"""Image benchmark: build times, layer and ISO sizes, and boot-to-OCR-ready against a bare image, in one run.

    python3 -m bench.image              # root and the build host's tools (`make iso` installs them)
    python3 -m bench.image --no-boot    # build figures only

1. Cold build of the default (cpu) image into a fresh layer cache. The downloaded .debs and wheels are shared with
   the normal cache, so this measures building, not the network.
2. Rebuild after an app-only change: the UI language differs, which changes only the app layer's inputs.
3. Boot, in QEMU (BIOS, CD, same settings for both), a LAN-mode copy of the image up to its first OCR answer
   through the port forward (asked for as soon as /health says the engine is ready), and a bare image made of the
   same base layer (Debian, kernel, live-boot, Xorg, Chromium; no Python runtime, no app, no kiosk) up to systemd
   reporting the boot finished.
   With --reproduce, a second cold build into other folders must give the same ISO bytes (imagebuilder.reproduce).
4. The gpu image in out/, if any: its layer sizes, and its rebuild times given its model directory.
   Goal: the appliance's boot-to-OCR-ready within 1.2x of the bare image's boot.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from pathlib import Path

from imagebuilder import app, boot, host, iso, layers, reproduce, rootfs, run_build
from imagebuilder.boottest.checks import check_ocr
from imagebuilder.boottest.sticks import OCR_TEXT
from imagebuilder.boottest.vm import Vm
from imagebuilder.context import Context, hash_inputs, make_context, remove_tree
from imagebuilder.settings import REPO, resolve
from imagebuilder.stages import Stage, run_stages

TOKEN = "bench-token-not-secret"
BARE_READY = re.compile(r"APPLIANCE-BARE-READY uptime=(\S+)")
# The bare image's only addition: say on the serial console when systemd considers the boot finished.
BARE_SCRIPT = """#!/bin/sh
state=$(timeout 600 systemctl is-system-running --wait)
echo "APPLIANCE-BARE-READY uptime=$(cut -d' ' -f1 /proc/uptime) state=$state" > /dev/ttyS0
"""
BARE_UNIT = """[Unit]
Description=bench: report on the serial console when the boot finished
[Service]
Type=exec
ExecStart=/usr/local/lib/bench-bare-ready
"""


def build_bare_layer(ctx: Context) -> str:
    def fill(tree: Path) -> dict:
        script = tree / "usr/local/lib/bench-bare-ready"
        unit = tree / "etc/systemd/system/bench-bare-ready.service"
        link = tree / "etc/systemd/system/multi-user.target.wants/bench-bare-ready.service"
        for p in (script, unit, link):
            p.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(BARE_SCRIPT)
        script.chmod(0o755)
        unit.write_text(BARE_UNIT)
        link.symlink_to("/etc/systemd/system/bench-bare-ready.service")
        return {}

    layer = layers.cached_layer(ctx, "bare", app.ORDER, hash_inputs("bare", BARE_SCRIPT, BARE_UNIT), ctx.epoch)
    layers.reuse_or_build(ctx, layer, fill)
    return layers.describe(layer)


BARE_STAGES = (
    Stage("check-host", host.require_host),
    Stage("base-layer", rootfs.build_base_layer),
    Stage("bare-layer", build_bare_layer),
    Stage("bootloader", boot.make_bootloader),
    Stage("iso-tree", iso.populate_tree),
    Stage("iso", iso.make_iso),
)


def build_bare_iso(cache: Path, dest: Path) -> Path:
    ctx = make_context(resolve("cpu", ["name=bare"], cache_dir=str(cache), out_dir=str(dest.parent)))
    try:
        run_stages(ctx, BARE_STAGES, log=lambda *a, **k: None)
        shutil.move(ctx.files["iso"], dest)
    finally:
        remove_tree(ctx.work)
    return dest


def fresh_layer_cache(cache: Path) -> Path:
    """A build cache with no layers that shares the normal cache's downloads: builds into it measure building, not
    the network."""
    cache.mkdir(parents=True)
    for shared in ("debs", "wheels"):
        (REPO / "cache" / shared).mkdir(parents=True, exist_ok=True)
        (cache / shared).symlink_to(REPO / "cache" / shared)
    return cache


def boot_to_first_ocr(iso_path: Path, out: Path, timeout: float = 600) -> dict:
    """Seconds from QEMU's start until the API answers, its engine is ready and a first OCR comes back right, asked
    from the host as a program would (not after the boot test's in-guest selftest, which also waits for the kiosk
    to draw)."""
    vm = Vm(disk=iso_path, mode="bios-cd", dir=out)
    result: dict = {}
    try:
        vm.start()
        deadline = vm.started + timeout
        while time.monotonic() < deadline:
            status, body = vm.http("/health", TOKEN, timeout=3)
            if status == 200:
                result.setdefault("seconds_to_api", round(time.monotonic() - vm.started, 1))
                if json.loads(body)["engine"]["ready"]:
                    result["seconds_to_engine"] = round(time.monotonic() - vm.started, 1)
                    check_ocr(vm, TOKEN, result)
                    break
            time.sleep(1)
    finally:
        vm.stop()
    return result


def gpu_figures(model: str | None, cold: bool, work: Path, log: list[str]) -> list[str]:
    """The gpu image: its layer and ISO sizes (from the newest gpu build's manifest in out/), and, given the model
    directory it was built from, an app-only rebuild (the big layers reused) and, with `cold`, a cold build into
    a fresh layer cache (about 25 minutes on 2 cores)."""
    manifests = sorted(REPO.glob("out/**/*-gpu.manifest.json"), key=lambda p: p.stat().st_mtime)
    if not manifests:
        return ["gpu image: none in out/ (appliance build --profile gpu --model DIR --accept-model-license)"]
    manifest = json.loads(manifests[-1].read_text())
    iso_path = manifests[-1].with_name(manifests[-1].name.replace(".manifest.json", ".iso"))
    figures = [f"gpu image: {manifests[-1].relative_to(REPO)}"]
    figures += [f"gpu layer {layer['name']:<16} {layer['size'] / 2**20:7.1f} MiB" for layer in manifest["layers"]]
    if iso_path.exists():
        figures.append(f"gpu ISO                    {iso_path.stat().st_size / 1e6:7.1f} MB")
    model = model or manifest["settings"].get("model_dir")
    if not model or not Path(model).is_dir():
        return figures + [f"gpu builds: not timed (give --gpu-model DIR; {model or 'no model dir'} is gone)"]
    settings = [f"{key}={manifest['settings'][key]}" for key in ("gpu_stack", "model_version")]
    if cold:
        cache = fresh_layer_cache(work / "gpu-cache")
        print("gpu image: cold build (fresh layer cache) ...", flush=True)
        seconds, _ = timed_build(
            log,
            "gpu",
            settings,
            model=model,
            out_dir=str(work / "out-gpu-cold"),
            cache_dir=str(cache),
            accept_model_license=True,
        )
        figures.append(f"gpu cold build             {seconds:7.1f} s")
    print("gpu image: rebuild after an app-only change (UI language) ...", flush=True)
    seconds, _ = timed_build(
        log,
        "gpu",
        [*settings, "language=zh"],
        model=model,
        out_dir=str(work / "out-gpu-zh"),
        accept_model_license=True,
    )
    return figures + [f"gpu app-only rebuild       {seconds:7.1f} s   (goal < 45 s)"]


def timed_build(log: list[str], *args, **kwargs) -> tuple[float, Path]:
    lines: list[str] = []
    started = time.monotonic()
    iso_path = run_build(*args, log=lambda *a, **k: lines.append(" ".join(map(str, a))), **kwargs)
    log.extend(line for line in lines if line.startswith(("timings:", "layers:")))
    return time.monotonic() - started, iso_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(REPO / "out" / "bench-image"), help="scratch folder (kept for a look)")
    ap.add_argument("--no-boot", action="store_true", help="build figures only")
    ap.add_argument(
        "--gpu-model",
        metavar="DIR",
        help="the model directory of the gpu image in out/ (default: the "
        "one its manifest names), to time its app-only rebuild",
    )
    ap.add_argument("--gpu-cold", action="store_true", help="also time a cold gpu build (about 25 minutes)")
    ap.add_argument(
        "--reproduce",
        action="store_true",
        help="a second cold build into another fresh layer cache and output folder: the same ISO, bit for bit?",
    )
    args = ap.parse_args(argv)
    work = Path(args.work).resolve()
    remove_tree(work)
    cache = fresh_layer_cache(work / "cache")
    log: list[str] = []
    print("cold build (fresh layer cache) ...", flush=True)
    cold, iso_path = timed_build(log, "cpu", out_dir=str(work / "out"), cache_dir=str(cache))
    print("rebuild after an app-only change (UI language) ...", flush=True)
    rebuild, _ = timed_build(log, "cpu", ["language=zh"], out_dir=str(work / "out-zh"), cache_dir=str(cache))
    layer_sizes = {p.parent.name.split("-")[0]: p.stat().st_size for p in (cache / "layers").glob("*/layer.squashfs")}
    figures = [
        f"cold build                 {cold:7.1f} s",
        f"app-only rebuild           {rebuild:7.1f} s   (goal < 45 s)",
        *[f"layer {name:<20} {size / 2**20:7.1f} MiB" for name, size in sorted(layer_sizes.items())],
        f"ISO {iso_path.name:<22} {iso_path.stat().st_size / 1e6:7.1f} MB    (goal < 700 MB)",
    ]
    if args.reproduce:  # the whole check (own downloads, other checkout, umask, locale): make reproduce
        print("second cold build (other layer cache and output folder) ...", flush=True)
        other_cache = fresh_layer_cache(work / "cache-again")
        again, _ = timed_build(log, "cpu", out_dir=str(work / "out-again"), cache_dir=str(other_cache))
        same = reproduce.compare(work / "out", work / "out-again", work / "compare", log=log.append)
        figures.append(f"second cold build          {again:7.1f} s   same ISO bytes: {'yes' if same else 'NO'}")
    if not args.no_boot:
        print("LAN-mode copy and bare image ...", flush=True)
        _, lan_iso = timed_build(
            log, "cpu", ["lan=on", f"lan_token={TOKEN}"], out_dir=str(work / "out-lan"), cache_dir=str(cache)
        )
        bare_iso = build_bare_iso(cache, work / "bare.iso")
        figures.append(f"bare ISO                   {bare_iso.stat().st_size / 1e6:7.1f} MB")
        print("booting the bare image (BIOS CD) ...", flush=True)
        vm = Vm(disk=bare_iso, mode="bios-cd", dir=work / "boot-bare")
        try:
            vm.start()
            m = vm.wait_serial(BARE_READY, 600)
            bare_s = time.monotonic() - vm.started if m else None
        finally:
            vm.stop()
        print("booting the appliance (BIOS CD) up to its first OCR answer ...", flush=True)
        r = boot_to_first_ocr(lan_iso, work / "boot-appliance")
        ours = r.get("seconds_to_first_ocr") if r.get("ocr", {}).get("text") == OCR_TEXT else None
        figures += [
            f"bare image: boot finished  {bare_s:7.1f} s" if bare_s else "bare image: no ready line within 600 s",
            f"appliance: API answers     {r.get('seconds_to_api') or 0:7.1f} s",
            f"appliance: engine ready    {r.get('seconds_to_engine') or 0:7.1f} s",
            f"appliance: first OCR       {ours:7.1f} s" if ours else f"appliance: no right OCR answer {r}",
        ]
        if bare_s and ours:
            figures.append(f"boot-to-OCR-ready / bare   {ours / bare_s:7.2f} x   (goal <= 1.2 x)")
    figures += gpu_figures(args.gpu_model, args.gpu_cold, work, log)
    print("\n".join(["", "image benchmark (this machine, this run):", *figures, *log]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
