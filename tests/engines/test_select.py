"""`auto`'s choice between the engines (appliance.ocr.engines.select) and the one GPU question it asks
(appliance.gpu.detect.find_gpu: a GPU the loaded NVIDIA driver runs)."""

from __future__ import annotations

import json

import pytest

from appliance.gpu.detect import find_gpu
from appliance.ocr.engines import select
from appliance.servers import vllm


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "hunyuan_vl"}))
    (d / "model.safetensors").write_bytes(b"\0" * 64)
    return d


def test_auto_picks_cpu_without_a_gpu(tiny_model_dir):
    if find_gpu()[0] is not None:
        pytest.skip("this machine has an NVIDIA GPU")
    assert select.choose("auto", tiny_model_dir).engine == "cpu"


def test_auto_on_a_cuda12_image_falls_back_to_cpu_when_the_server_is_not_running(monkeypatch, model_dir):
    monkeypatch.setattr(select, "find_gpu", lambda: ("NVIDIA RTX 4090", "NVIDIA GPU found: NVIDIA RTX 4090"))
    monkeypatch.setattr(select, "load_stack_info", lambda path=None: {"engines": ["hunyuan-vllm"]})
    monkeypatch.setattr(select, "server_ready", lambda url, timeout=1.0: False)
    monkeypatch.setattr(vllm, "unit_state", lambda: "inactive")
    choice = select.choose("auto", model_dir)
    assert choice.engine == "cpu" and "appliance-vllm.service" in choice.reason
    monkeypatch.setattr(vllm, "unit_state", lambda: "activating")
    assert select.choose("auto", model_dir).engine == "hunyuan-vllm"  # open_engine then waits for it


def test_explicit_and_unknown_engine_names(monkeypatch):
    monkeypatch.setattr(select, "find_gpu", lambda: (None, "no NVIDIA kernel driver loaded"))
    assert select.choose("cpu").engine == "cpu" and select.choose("cpu").reason == "chosen explicitly"
    with pytest.raises(ValueError, match="unknown engine 'gpu'; choose one of: auto, hunyuan-vllm"):
        select.choose("gpu")


def test_find_gpu_reads_the_loaded_drivers_proc_entry(tmp_path):
    proc = tmp_path / "nvidia"
    assert find_gpu(proc) == (None, f"no NVIDIA kernel driver loaded ({proc / 'version'} missing)")
    (proc / "gpus" / "0000:01:00.0").mkdir(parents=True)
    (proc / "version").write_text("NVRM version: NVIDIA UNIX Open Kernel Module 580.95.05\n")
    (proc / "gpus" / "0000:01:00.0" / "information").write_text("Model: \t\t NVIDIA H100 80GB HBM3\nIRQ: 42\n")
    assert find_gpu(proc) == ("NVIDIA H100 80GB HBM3", "NVIDIA GPU found: NVIDIA H100 80GB HBM3")
