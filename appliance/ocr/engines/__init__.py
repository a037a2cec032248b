"""Engines behind one small protocol, and the choice between them (`--engine auto|...`).

An engine turns one page image into a `Page`: boxes in pixels of the image it was given, text, and whatever the task
adds (markdown, fields, translation). Loading, capping and post-processing are the engine's business; reading files,
page loops, timings and the result document are the pipeline's (`appliance.ocr.pipeline`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image

from appliance.ocr import steps
from appliance.ocr.errors import EngineUnavailable, TaskNotSupported
from appliance.ocr.result import EngineInfo, Page
from appliance.ocr.tasks import Request, Task

ENGINE_NAMES = ("auto", "hunyuan-vllm", "hunyuan-transformers", "cpu")
# What a person reads on the start screen ("loading the CPU engine").
ENGINE_TITLES = {"hunyuan-vllm": "HunyuanOCR (vLLM)", "hunyuan-transformers": "HunyuanOCR (transformers)", "cpu": "CPU"}


class Engine(Protocol):
    info: EngineInfo
    tasks: frozenset[Task]

    def recognize(self, image: Image.Image, request: Request) -> Page: ...

    def close(self) -> None: ...


def check_task(engine: Engine, request: Request) -> None:
    """Refuse a task the engine cannot do, before any work, with a message that says what is needed."""
    if request.task not in engine.tasks:
        raise TaskNotSupported(request.task.value, engine.info.name, {t.value for t in engine.tasks})


@dataclass
class Choice:
    """Which engine `auto` (or the caller) picked, and why, in words for `appliance doctor` and the UI."""

    engine: str
    reason: str
    gpu: str | None  # e.g. "NVIDIA H100 80GB HBM3", None when no usable NVIDIA GPU


def find_gpu() -> tuple[str | None, str]:
    """(GPU name or None, why) without importing torch: the kernel driver's /proc entry, then nvidia-smi."""
    proc = Path("/proc/driver/nvidia/gpus")
    if not Path("/proc/driver/nvidia/version").exists():
        return None, "no NVIDIA kernel driver loaded (/proc/driver/nvidia/version missing)"
    names = []
    for info in sorted(proc.glob("*/information")):
        for line in info.read_text(errors="replace").splitlines():
            if line.startswith("Model:"):
                names.append(line.split(":", 1)[1].strip())
    if not names and shutil.which("nvidia-smi"):
        import subprocess

        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
        names = [n.strip() for n in out.stdout.splitlines() if n.strip()]
    if not names:
        return None, "NVIDIA driver loaded but it reports no GPU"
    return names[0], f"NVIDIA GPU found: {names[0]}"


def choose(name: str = "auto", model_dir: str | os.PathLike | None = None, vllm_url: str | None = None) -> Choice:
    """Resolve `auto`: NVIDIA GPU + model directory -> HunyuanOCR (vLLM if its server answers), otherwise `cpu`."""
    gpu, gpu_why = find_gpu()
    if name != "auto":
        if name not in ENGINE_NAMES:
            raise ValueError(f"unknown engine '{name}'; choose one of: {', '.join(ENGINE_NAMES)}")
        return Choice(name, "chosen explicitly", gpu)
    if gpu is None:
        return Choice("cpu", f"{gpu_why}; the CPU engine does spotting and plain text", None)
    if not model_dir or not (Path(model_dir) / "config.json").is_file():
        return Choice("cpu", f"{gpu_why}, but no HunyuanOCR model directory was given (--model DIR)", gpu)
    from appliance.gpu import load_stack_info
    from appliance.ocr.engines import vllm

    url = vllm_url or vllm.DEFAULT_URL
    if vllm.server_ready(url):
        return Choice("hunyuan-vllm", f"{gpu_why}; vLLM server answers at {url}", gpu)
    stack = load_stack_info()  # {} off the image: a dev machine, where transformers in-process is the fallback
    if stack:
        if vllm.unit_state() in ("active", "activating", "reloading"):
            return Choice("hunyuan-vllm", f"{gpu_why}; the model server ({vllm.VLLM_UNIT}) is starting", gpu)
        if "hunyuan-transformers" not in stack.get("engines", ()):
            return Choice("cpu", f"{gpu_why}, but the model server ({vllm.VLLM_UNIT}) is not running "
                          f"(journalctl -u {vllm.VLLM_UNIT} says why); the CPU engine does spotting and plain text",
                          gpu)
    return Choice("hunyuan-transformers", f"{gpu_why}; no vLLM server running, using transformers in-process", gpu)


def open_engine(
    name: str = "auto", model_dir=None, vllm_url: str | None = None, device: str | None = None, progress=None
) -> Engine:
    """Start the named engine (resolving `auto` first). Raises EngineUnavailable with the reason if it cannot run.
    `progress(words)` hears what is being loaded, for a start screen."""
    choice = choose(name, model_dir, vllm_url)
    steps.report(progress, "opening", choice.reason, engine=ENGINE_TITLES[choice.engine])
    if choice.engine == "cpu":
        from appliance.ocr.engines.cpu import CpuEngine

        return CpuEngine()
    if not model_dir:
        raise EngineUnavailable(choice.engine, "it needs the HunyuanOCR model directory (--model DIR)")
    if choice.engine == "hunyuan-transformers":
        from appliance.ocr.engines.transformers import TransformersEngine

        return TransformersEngine(model_dir, device=device)
    from appliance.ocr.engines import vllm

    if name == "auto" and not vllm.wait_for_server(vllm_url or vllm.DEFAULT_URL, progress):
        # The image's model server did not come up (skipped, failed, or too slow): serve on the CPU meanwhile.
        from appliance.ocr.engines.cpu import CpuEngine

        steps.report(progress, "vllm_gone")
        return CpuEngine()
    engine = vllm.VllmEngine(model_dir, url=vllm_url)
    steps.report(progress, "warm_up", percent=98)
    engine.warm_up()
    return engine
