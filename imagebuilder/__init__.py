"""The image builder, host only: `appliance build` -> run_build(); `appliance doctor` -> host.check_host();
`appliance boot-test` -> boottest. Never copied into the image nor hashed into its app layer (app.py); it may import
the runtime (appliance.*), the runtime never imports it (but the CLI's host-tools commands, lazily)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from imagebuilder.context import BuildError, make_context, remove_tree
from imagebuilder.settings import SettingsError, resolve

__all__ = ["run_build", "BuildError", "SettingsError"]


def run_build(
    profile: str = "cpu",
    overrides: list[str] | tuple[str, ...] = (),
    model: str | None = None,
    out_dir: str | None = None,
    cache_dir: str | None = None,
    dump_config: bool = False,
    log=print,
    accept_model_license: bool | None = None,
) -> Path:
    """Build out/<name>-<version>-<profile>.iso (+ SHA256SUMS, <same name>.manifest.json); return the ISO's path.

    profile: a name in build/profiles/ or a YAML path; overrides: ["KEY=VALUE", ...] from --set; model: --model DIR.
    Raises SettingsError (bad profile/override: names the key and the file) or BuildError (names the failed
    stage and why). On failure nothing is left in out_dir: everything is made in a work dir first.
    """
    from imagebuilder.stages import run_stages

    config = resolve(
        profile,
        overrides,
        model_dir=model,
        out_dir=out_dir,
        cache_dir=cache_dir,
        accept_model_license=accept_model_license,
    )
    if dump_config:
        log(config.dump())
    # Files the build makes (pip's, the app's, mmdebstrap's) get the same modes whatever the caller's umask.
    umask = os.umask(0o022)
    try:
        ctx = make_context(config)
        log(f"building {ctx.stem} (work dir {ctx.work})", flush=True)
        started = time.monotonic()
        try:
            timings = run_stages(ctx, log=log)
        finally:
            remove_tree(ctx.work)
    finally:
        os.umask(umask)
    total = time.monotonic() - started
    log("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()) + f"; total {total:.1f}s")
    log(
        "layers: "
        + ", ".join(
            f"{layer.filename} {layer.meta['size'] / 2**20:.1f} MiB" + (" (reused)" if layer.cached else "")
            for layer in ctx.layers
        )
    )
    return ctx.out_dir / f"{ctx.stem}.iso"
