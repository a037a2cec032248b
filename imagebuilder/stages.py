"""The build, as a flat ordered list of small named stages run on one Context (after mkosi's build_image())."""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from imagebuilder import app, boot, cpu_model, host, iso, llamacpp, manifest, model, nvidia, pyenv, rootfs, stack, usb
from imagebuilder.context import BuildError, Context


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Context], str | None]  # returns a one-line summary
    when: Callable[[Context], bool] = lambda ctx: True


def gpu(ctx: Context) -> bool:
    """The gpu profile's stages run when the image has a GPU stack (gpu_stack names a lock)."""
    return bool(ctx.config.gpu_stack)


def has_model(ctx: Context) -> bool:
    """The image bundles HunyuanOCR: the gpu profile always (its check says when --model is missing), the cpu
    profile when --model DIR is given."""
    return gpu(ctx) or bool(ctx.config.model_dir)


STAGES: tuple[Stage, ...] = (
    # gpu: both checks come first, so a wrong stack or model directory costs seconds, not gigabytes
    Stage("gpu-stack", stack.check_stack, when=gpu),  # driver/CUDA/torch/vLLM/transformers, before any download
    Stage("model-check", model.check_model, when=has_model),  # licence, version dir, files, sha256
    Stage("check-host", host.require_host),
    Stage("base-layer", rootfs.build_base_layer),  # mmdebstrap: Debian, kernel, live-boot, Xorg, Chromium
    Stage("nvidia-layer", nvidia.build_driver_layer, when=gpu),  # DKMS modules for the image's kernel, libcuda
    # llama-server for the CPU model, built in a chroot of the base layer
    Stage("llama.cpp-layer", llamacpp.build_llamacpp_layer, when=lambda ctx: cpu_model.wanted(ctx.config)),
    Stage("python-layer", pyenv.build_python_layer),  # wheels for the image's Python (gpu: + torch, vLLM, CUDA)
    Stage("model-layer", model.build_model_layer, when=has_model),  # weights (+ GGUF), in their own squashfs
    Stage("app-layer", app.build_app_layer),  # appliance + webui + rootfs/ overlay + runtime config
    Stage("bootloader", boot.make_bootloader),
    Stage("iso-tree", iso.populate_tree),
    Stage("iso", iso.make_iso),
    Stage("usb-image", usb.make_usb_image, when=lambda ctx: ctx.config.usb_image),
    Stage("ventoy-dat", usb.make_ventoy_dat, when=lambda ctx: ctx.config.ventoy_dat),
    Stage("manifest", manifest.write_manifest),
    Stage("publish", manifest.publish),
)


def run_stages(ctx: Context, stages=STAGES, log=print) -> dict[str, float]:
    """Run each stage in order, printing progress and time; the first failure names its stage and stops."""
    timings: dict[str, float] = {}
    todo = [s for s in stages if s.when(ctx)]
    for i, stage in enumerate(todo, 1):
        log(f"[{i}/{len(todo)}] {stage.name} ...", flush=True)
        started = time.monotonic()
        try:
            summary = stage.run(ctx)
        except BuildError as e:
            raise BuildError(f"stage '{stage.name}' failed: {e}") from None
        except Exception as e:  # a bug, not a tool failure: keep the traceback for the report
            traceback.print_exc(file=sys.stderr)
            raise BuildError(f"stage '{stage.name}' failed: {type(e).__name__}: {e}") from None
        timings[stage.name] = time.monotonic() - started
        log(
            f"[{i}/{len(todo)}] {stage.name} done in {timings[stage.name]:.1f}s"
            + (f": {summary}" if summary else ""),
            flush=True,
        )
    return timings
