"""The image builder: `appliance build` -> run_build(); `appliance doctor` -> host.check_host()."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from appliance.build.context import BuildError, make_context, remove_tree
from appliance.settings import SettingsError, resolve

__all__ = ["run_build", "BuildError", "SettingsError"]


def run_build(profile: str = "cpu", overrides: list[str] | tuple[str, ...] = (), model: str | None = None,
              out_dir: str | None = None, cache_dir: str | None = None, dump_config: bool = False,
              log=print) -> Path:
    """Build out/<name>-<version>-<profile>.iso (+ SHA256SUMS, manifest.json); return the ISO's path.

    profile: a name in build/profiles/ or a YAML path; overrides: ["KEY=VALUE", ...] from --set; model: --model DIR.
    Raises SettingsError (bad profile/override: names the key and the file) or BuildError (names the failed
    stage and why). On failure nothing is left in out_dir: everything is made in a work dir first.
    """
    from appliance.build.stages import run_stages

    config = resolve(profile, overrides, model_dir=model, out_dir=out_dir, cache_dir=cache_dir)
    if dump_config:
        log(config.dump())
    ctx = make_context(config)
    log(f"building {ctx.stem} (work dir {ctx.work})", flush=True)
    started = time.monotonic()
    try:
        timings = run_stages(ctx, log=log)
    finally:
        remove_tree(ctx.work)
    total = time.monotonic() - started
    log("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()) + f"; total {total:.1f}s")
    log("layers: " + ", ".join(f"{layer.filename} {layer.meta['size'] / 2**20:.1f} MiB"
                               + (" (reused)" if layer.cached else "") for layer in ctx.layers))
    return ctx.out_dir / f"{ctx.stem}.iso"


def main(argv: list[str] | None = None) -> int:
    """`python -m appliance.build` until the `appliance build` subcommand lands in the CLI."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m appliance.build")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the live ISO")
    b.add_argument("--profile", default="cpu")
    b.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    b.add_argument("--model", metavar="DIR")
    b.add_argument("--out", metavar="DIR")
    b.add_argument("--cache", metavar="DIR")
    b.add_argument("--dump-config", action="store_true", help="print the effective settings first")
    d = sub.add_parser("doctor", help="check the build host")
    d.add_argument("--missing-packages", action="store_true", help="print the Debian packages to install")
    t = sub.add_parser("boot-test", help="boot an ISO in QEMU and check it")
    t.add_argument("iso")
    t.add_argument("--modes", default="bios-cd,uefi-cd,bios-usb,uefi-usb")
    t.add_argument("--artifacts", default="out/boot-test")
    t.add_argument("--timeout", type=int, default=600, help="seconds per boot")
    t.add_argument("--lan-token", help="the token the image was built with (to call the API)")
    t.add_argument("--persistence", action="store_true", help="also check that data survives a reboot (USB)")
    args = p.parse_args(argv)
    try:
        if args.cmd == "build":
            run_build(args.profile, args.overrides, args.model, args.out, args.cache, args.dump_config)
        elif args.cmd == "doctor":
            from appliance.build.host import check_host, missing_packages

            if args.missing_packages:
                print(" ".join(missing_packages()))
                return 0
            checks = check_host()
            for name, ok, detail in checks:
                print(f"{'ok  ' if ok else 'FAIL'} {name:<20} {detail}")
            return 0 if all(ok for _, ok, _ in checks) else 1
        elif args.cmd == "boot-test":
            from appliance.build.qemu import boot_test

            return boot_test(Path(args.iso), args.modes.split(","), Path(args.artifacts), args.timeout,
                             lan_token=args.lan_token, persistence=args.persistence)
    except (SettingsError, BuildError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
