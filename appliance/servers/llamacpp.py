"""llama.cpp's `llama-server`, the model server on the CPU: how the client reaches it, its command line, starting it
offline, and its start-up phases as its log shows them.

It serves HunyuanOCR from two GGUF files (text model + vision projector, appliance.model_dir.find_gguf) on
127.0.0.1:8002 (8001 is vLLM's), never beyond loopback, with its web page off, and it cannot download anything (built
without an HTTPS client, imagebuilder.llamacpp_source; no -hf or URL arguments are ever passed). On the image,
appliance-llama.service runs `appliance llama-server`; the web app opens the client (appliance.ocr.engines.select).

Flags that matter (../shared/reference/hunyuanocr.md, "llama.cpp spike"): --no-repack, because ggml's AMX path
crashes on the first matmul on Sapphire Rapids (upstream issue 20824); one slot (one page at a time: the appliance
has one queue); threads = physical cores (a second hyperthread per core only slows matmuls); --cache-ram 0 (no RAM
kept for re-using earlier prompts: every page is a new image).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from appliance.model_dir import find_gguf, model_info
from appliance.ocr import images
from appliance.ocr.engines.openai_client import ModelServer, OpenAIEngine
from appliance.ocr.errors import EngineUnavailable
from appliance.offline import OFFLINE_ENV
from appliance.servers import process

NAME = "hunyuan-llamacpp"
DEFAULT_PORT = 8002
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}/v1"
# The unit's RuntimeDirectory: `llama-server` (our launcher) writes settings.json (the pixel cap clients must keep)
# and progress.json (how far its start-up got) there.
RUN_DIR = Path("/run/appliance-llama")
LLAMA_UNIT = "appliance-llama.service"
INSTALLED_BINARY = Path("/opt/llama.cpp/bin/llama-server")  # where the image's llama.cpp layer puts it
BINARY_ENV = "APPLIANCE_LLAMA_SERVER"  # a llama-server to use instead (tests, a dev machine)
# 4096 answer tokens (OpenAIEngine's max_tokens) + the image's tokens at the CPU cap + the prompt. The KV cache
# costs ~96 KiB per token at HunyuanOCR's size (24 layers x 8 KV heads x 128 x K,V x f16): 8192 tokens ~ 0.8 GB.
DEFAULT_CTX_SIZE = 8192
SERVER_START_TIMEOUT = 600  # loading ~1.5 GB of GGUF from a slow USB stick takes minutes

SERVER = ModelServer(
    engine=NAME,
    device="llama.cpp",
    title="llama.cpp",
    default_url=DEFAULT_URL,
    start_hint="start it with 'appliance llama-server --model DIR'",
    greedy={"top_k": 1},
    penalty_field="repeat_penalty",  # llama-server's name; it ignores "repetition_penalty"
    gguf=True,
)


def open_client(model_dir, url: str | None = None, run_dir: Path | None = None, **options) -> OpenAIEngine:
    """The client for the llama-server at `url` (process.open_client: capped at the pixels it was started with)."""
    return process.open_client(SERVER, run_dir or RUN_DIR, model_dir, url, **options)


def unit_state() -> str:
    return process.unit_state(LLAMA_UNIT)


def wait_for_server(
    url: str = DEFAULT_URL,
    progress=None,
    timeout: float = SERVER_START_TIMEOUT,
    state=None,
    poll: float = 2.0,
    run_dir: Path | None = None,
) -> bool:
    """On the image: wait while appliance-llama.service starts the server (process.wait_for_unit)."""
    return process.wait_for_unit(
        url, state or unit_state, run_dir or RUN_DIR, "llama_waiting", progress, timeout, poll
    )


# llama-server's start-up as its log shows it (llama.cpp of llama-cpp-python 0.3.36, read from a real start:
# "0.00.005.206 I srv    load_model: loading model '/m/hunyuanocr-q8_0.gguf'", "... load_model: loaded multimodal
# model, '/m/mmproj-hunyuanocr-f16.gguf'", "... load_model: initializing, n_slots = 1, n_ctx_slot = 8192, ...",
# "... llama_server: model loaded", then "llama_server: listening on http://127.0.0.1:8002"):
# (pattern, step in appliance.ocr.steps, percent of the way to ready).
START_PHASES = (
    (re.compile(r"load_model: loading model '"), "llama_weights", 10),
    (re.compile(r"load_model: loaded multimodal model"), "llama_vision", 60),
    (re.compile(r"load_model: initializing, n_slots"), "llama_cache", 80),
    (re.compile(r"llama_server: model loaded"), "llama_api", 95),
)


def start_phase(line: str) -> tuple[str, int] | None:
    """(step, percent) when this line of llama-server's output marks a step of its start-up."""
    for pattern, step, percent in START_PHASES:
        if pattern.search(line):
            return step, percent
    return None


def server_binary() -> str:
    """$APPLIANCE_LLAMA_SERVER, else the image's /opt/llama.cpp/bin/llama-server, else llama-server on PATH;
    EngineUnavailable when none exists."""
    candidates = [os.environ.get(BINARY_ENV), str(INSTALLED_BINARY), shutil.which("llama-server")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    where = f"${BINARY_ENV}, {INSTALLED_BINARY} or PATH"
    raise EngineUnavailable(NAME, f"llama-server is not installed (looked in {where}; 'make llama-cpp' builds it)")


def physical_cores() -> int:
    """Cores this process may run on, counting hyperthread siblings once (Linux sysfs; else the CPU count)."""
    cpus = os.sched_getaffinity(0)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return len(cpus)
        cores.add((package, core))
    return max(1, len(cores))


def server_command(
    model_dir,
    port: int = DEFAULT_PORT,
    threads: int | None = None,
    ctx_size: int = DEFAULT_CTX_SIZE,
    binary: str | None = None,
    extra=(),
) -> list[str]:
    """The llama-server command line for the GGUF files of `model_dir`, on loopback, under our model id."""
    text, mmproj = find_gguf(model_dir, NAME)
    model_id, _ = model_info(model_dir)
    threads = threads or physical_cores()
    return [
        binary or server_binary(),
        "--model",
        str(text),
        "--mmproj",
        str(mmproj),
        "--alias",
        model_id,  # the name the client looks for in /v1/models
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-webui",
        "--threads",
        str(threads),
        "--threads-batch",
        str(threads),
        "--ctx-size",
        str(ctx_size),
        "--parallel",
        "1",
        "--no-repack",  # AMX crash on Sapphire Rapids (module docstring)
        "--cache-ram",
        "0",
        *extra,
    ]


def start_server(
    model_dir,
    port: int = DEFAULT_PORT,
    threads: int | None = None,
    ctx_size: int = DEFAULT_CTX_SIZE,
    max_pixels: int | None = None,
    log=None,
    run_dir: Path | None = None,
    timeout: float = SERVER_START_TIMEOUT,
    extra=(),
) -> subprocess.Popen:
    """Start llama-server offline and wait until it answers; EngineUnavailable (and no process left) otherwise.

    `max_pixels`: the image pixel cap its clients keep (settings.json; default: the model's own). `log`: a text file
    for the server's output (default: our stdout). `run_dir`: where settings.json and progress.json go.
    """
    command = server_command(model_dir, port, threads, ctx_size, extra=extra)
    settings = {
        "threads": int(command[command.index("--threads") + 1]),
        "ctx_size": ctx_size,
        "max_pixels": max_pixels or images.MODEL_MAX_PIXELS,
    }
    return process.start(
        command,
        f"http://127.0.0.1:{port}/v1",
        {**os.environ, **OFFLINE_ENV},
        NAME,
        "llama-server",
        start_phase,
        timeout=timeout,
        log=log,
        run_dir=run_dir,
        settings=settings,
    )
