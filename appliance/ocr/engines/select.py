"""Which engine runs (`--engine auto|...`): the choice and why, in words for `appliance doctor` and the UI, and
opening the chosen engine (waiting for the image's model server while it starts).

`auto`: a usable NVIDIA GPU -> HunyuanOCR on vLLM. No usable GPU (or a gpu image's fallback) -> HunyuanOCR on the
CPU through llama.cpp when the machine has it (the model's GGUF files, and its server answering or starting), for
every task except FAST_CPU_TASKS, which stay with rapidocr (the `cpu` engine): the one place that decides which
engine runs which task (appliance.ocr.engines.routed follows it). Otherwise the `cpu` engine alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from appliance.gpu.detect import find_gpu, load_stack_info
from appliance.messages import Text
from appliance.model_dir import find_gguf
from appliance.ocr import steps
from appliance.ocr.engines.base import ENGINE_NAMES, ENGINE_TITLES, Engine
from appliance.ocr.engines.openai_client import server_ready
from appliance.ocr.errors import EngineUnavailable
from appliance.ocr.tasks import Task
from appliance.servers import llamacpp, ram, vllm
from appliance.servers.process import RUNNING_STATES

# rapidocr reads a page in seconds on any CPU, HunyuanOCR on a CPU takes a minute or more: with llama.cpp on `auto`,
# these tasks stay with rapidocr (`--engine hunyuan-llamacpp` sends them to the model too).
FAST_CPU_TASKS = frozenset({Task.SPOTTING, Task.TEXT})


@dataclass
class Choice:
    """Which engine `auto` (or the caller) picked, and why, in words for `appliance doctor` and the UI."""

    engine: str
    reason: str
    gpu: str | None  # e.g. "NVIDIA H100 80GB HBM3", None when no usable NVIDIA GPU


def choose(
    name: str = "auto",
    model_dir: str | os.PathLike | None = None,
    vllm_url: str | None = None,
    llama_url: str | None = None,
) -> Choice:
    """Resolve `auto`: NVIDIA GPU + model directory -> HunyuanOCR (vLLM if its server answers), otherwise `cpu`."""
    gpu, gpu_why = find_gpu()
    if name != "auto":
        if name not in ENGINE_NAMES:
            raise ValueError(f"unknown engine '{name}'; choose one of: {', '.join(ENGINE_NAMES)}")
        return Choice(name, Text("choice_explicit"), gpu)
    if gpu is None:
        return on_the_cpu(model_dir, gpu_why, None, llama_url)
    if not model_dir or not (Path(model_dir) / "config.json").is_file():
        return Choice("cpu", Text("choice_no_model", why=gpu_why), gpu)
    url = vllm_url or vllm.DEFAULT_URL
    if server_ready(url):
        return Choice("hunyuan-vllm", Text("choice_vllm_answers", why=gpu_why, url=url), gpu)
    stack = load_stack_info()  # {} off the image: a dev machine, where transformers in-process is the fallback
    if stack:
        if vllm.unit_state() in RUNNING_STATES:
            return Choice("hunyuan-vllm", Text("choice_vllm_starting", why=gpu_why, unit=vllm.VLLM_UNIT), gpu)
        if "hunyuan-transformers" not in stack.get("engines", ()):
            why = Text("choice_vllm_not_running", why=gpu_why, unit=vllm.VLLM_UNIT)
            return on_the_cpu(model_dir, why, gpu, llama_url)
    return Choice("hunyuan-transformers", Text("choice_transformers", why=gpu_why), gpu)


def on_the_cpu(model_dir, why: str, gpu: str | None, llama_url: str | None = None) -> Choice:
    """No usable GPU: HunyuanOCR through llama.cpp when this machine has its GGUF files and its server answers or
    is starting; else the CPU engine, with the reason (not enough free memory, the server not running)."""
    cpu = Choice("cpu", Text("choice_cpu", why=why), gpu)
    if not model_dir:
        return cpu
    try:
        llamacpp_files = find_gguf(model_dir)
    except EngineUnavailable:
        return cpu
    tasks = Text("llama_tasks")
    url = llama_url or llamacpp.DEFAULT_URL
    if server_ready(url):
        return Choice("hunyuan-llamacpp", Text("choice_llama_answers", why=why, url=url, tasks=tasks), gpu)
    if llamacpp.unit_state() in RUNNING_STATES:
        starting = Text("choice_llama_starting", why=why, unit=llamacpp.LLAMA_UNIT, tasks=tasks)
        return Choice("hunyuan-llamacpp", starting, gpu)
    short = ram.shortfall(model_dir, llamacpp.DEFAULT_CTX_SIZE)
    if short:
        return Choice("cpu", Text("clauses", first=why, second=short), gpu)
    not_running = Text("choice_llama_not_running", why=why, file=llamacpp_files[0].name, unit=llamacpp.LLAMA_UNIT)
    return Choice("cpu", not_running, gpu)


def open_engine(
    name: str = "auto",
    model_dir=None,
    vllm_url: str | None = None,
    device: str | None = None,
    progress=None,
    llama_url: str | None = None,
) -> Engine:
    """Start the named engine (resolving `auto` first). Raises EngineUnavailable with the reason if it cannot run.
    `progress(words)` hears what is being loaded, for a start screen."""
    choice = choose(name, model_dir, vllm_url, llama_url)
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
        return open_llamacpp(name, model_dir, progress, llama_url)
    if name == "auto" and not vllm.wait_for_server(vllm_url or vllm.DEFAULT_URL, progress):
        # The image's model server did not come up (skipped, failed, or too slow): serve on the CPU meanwhile.
        from appliance.ocr.engines.cpu import CpuEngine

        steps.report(progress, "vllm_gone")
        return CpuEngine()
    engine = vllm.open_client(model_dir, url=vllm_url)
    steps.report(progress, "warm_up", percent=98)
    engine.warm_up()
    return engine


def open_llamacpp(name: str, model_dir, progress=None, url: str | None = None) -> Engine:
    """The llama.cpp client, warmed up, with its page times on this PC (appliance.ocr.pace); on `auto`, behind a
    RoutedEngine that leaves FAST_CPU_TASKS to rapidocr. `auto` falls back to the CPU engine when the image's
    server does not come up."""
    from appliance.ocr import pace
    from appliance.ocr.engines.cpu import CpuEngine
    from appliance.ocr.engines.routed import RoutedEngine

    url = url or llamacpp.DEFAULT_URL
    if name == "auto" and not llamacpp.wait_for_server(url, progress):
        steps.report(progress, "vllm_gone")
        return CpuEngine()
    engine = llamacpp.open_client(model_dir, url=url)
    steps.report(progress, "warm_up", percent=98)
    engine.warm_up()
    engine.page_seconds = pace.from_timings(getattr(engine, "last_timings", {}), engine.max_pixels)
    if name != "auto":
        return engine
    fast = CpuEngine()
    return RoutedEngine(engine, {task: fast for task in FAST_CPU_TASKS})
