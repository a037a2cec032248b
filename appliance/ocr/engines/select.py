"""Which engine runs (`--engine auto|...`): the choice and why, in words for `appliance doctor` and the UI, and
opening the chosen engine (waiting for the image's model server while it starts)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from appliance.gpu.detect import find_gpu, load_stack_info
from appliance.ocr import steps
from appliance.ocr.engines.base import ENGINE_NAMES, ENGINE_TITLES, Engine
from appliance.ocr.engines.openai_client import server_ready
from appliance.ocr.errors import EngineUnavailable
from appliance.servers import vllm
from appliance.servers.process import RUNNING_STATES


@dataclass
class Choice:
    """Which engine `auto` (or the caller) picked, and why, in words for `appliance doctor` and the UI."""

    engine: str
    reason: str
    gpu: str | None  # e.g. "NVIDIA H100 80GB HBM3", None when no usable NVIDIA GPU


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
    url = vllm_url or vllm.DEFAULT_URL
    if server_ready(url):
        return Choice("hunyuan-vllm", f"{gpu_why}; vLLM server answers at {url}", gpu)
    stack = load_stack_info()  # {} off the image: a dev machine, where transformers in-process is the fallback
    if stack:
        if vllm.unit_state() in RUNNING_STATES:
            return Choice("hunyuan-vllm", f"{gpu_why}; the model server ({vllm.VLLM_UNIT}) is starting", gpu)
        if "hunyuan-transformers" not in stack.get("engines", ()):
            return Choice(
                "cpu",
                f"{gpu_why}, but the model server ({vllm.VLLM_UNIT}) is not running "
                f"(journalctl -u {vllm.VLLM_UNIT} says why); the CPU engine does spotting and plain text",
                gpu,
            )
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
    if choice.engine == "hunyuan-llamacpp":
        from appliance.servers import llamacpp

        engine = llamacpp.open_client(model_dir)
        steps.report(progress, "warm_up", percent=98)
        engine.warm_up()
        return engine
    if name == "auto" and not vllm.wait_for_server(vllm_url or vllm.DEFAULT_URL, progress):
        # The image's model server did not come up (skipped, failed, or too slow): serve on the CPU meanwhile.
        from appliance.ocr.engines.cpu import CpuEngine

        steps.report(progress, "vllm_gone")
        return CpuEngine()
    engine = vllm.open_client(model_dir, url=vllm_url)
    steps.report(progress, "warm_up", percent=98)
    engine.warm_up()
    return engine
