"""A gpu image on a PC where the GPU cannot serve: every page says why in one sentence, the status page too, and the
tasks that need the model say so; the status page shows the model's licence and NOTICE."""

from __future__ import annotations

import json

import pytest
from fake_engine import FakeEngine

from appliance import gpu
from appliance.ocr.tasks import Task

STACK = {
    "name": "cuda12-debian-driver",
    "cuda": "12.8",
    "engines": ["hunyuan-vllm"],
    "modules_signed": False,
    "driver": {"source": "debian", "version": "550.163.01", "flavours": ["proprietary"]},
}


@pytest.fixture
def engine():
    """What runs on such a machine: an engine with the CPU engine's tasks."""
    return FakeEngine(tasks={Task.SPOTTING, Task.TEXT})


@pytest.fixture
def gpu_image(tmp_path, app_config):
    """The app as on a gpu image (gpu-stack.json present) on a machine whose /sys shows no NVIDIA card."""
    stack = tmp_path / "gpu-stack.json"
    stack.write_text(json.dumps(STACK))
    (tmp_path / "sys").mkdir()
    licence = tmp_path / "licence"
    licence.mkdir()
    (licence / "LICENSE").write_text("TENCENT HUNYUAN COMMUNITY LICENSE AGREEMENT <test>\n")
    (licence / "NOTICE").write_text("Notice: test copy\n")
    app_config.update(GPU_STACK_FILE=str(stack), SYSFS=str(tmp_path / "sys"), MODEL_LICENSE_DIR=str(licence))
    return tmp_path


def test_banner_on_every_page_of_a_gpu_image_without_a_gpu(gpu_image, client):
    for path in ("/", "/history", "/status"):
        page = client.get(path).get_data(as_text=True)
        assert 'id="gpu-banner"' in page, path
        assert "No NVIDIA graphics card was found. OCR runs on the CPU meanwhile" in page
    status = client.get("/status").get_data(as_text=True)
    assert 'id="gpu-fallback"' in status


@pytest.fixture
def cpu_model(tmp_path, app_config):
    """The model directory of a gpu image built with cpu_model on (the default): the GGUF pair beside the weights."""
    gguf = tmp_path / "model" / "gguf"
    gguf.mkdir(parents=True)
    for name in ("hunyuanocr-q8_0.gguf", "mmproj-hunyuanocr-f16.gguf"):
        (gguf / name).write_bytes(b"GGUF")
    app_config["MODEL_DIR"] = str(tmp_path / "model")
    return tmp_path / "model"


def test_banner_says_every_task_still_works_with_the_cpu_model(gpu_image, cpu_model, client):
    """Its fallback is llama.cpp: the banner must not say that only two tasks work."""
    page = client.get("/").get_data(as_text=True)
    assert "No NVIDIA graphics card was found. OCR runs on the CPU meanwhile: every task" in page
    assert "only text spotting" not in page
    client.set_cookie("lang", "zh")
    chinese = client.get("/").get_data(as_text=True)
    assert "未找到 NVIDIA 显卡。在此期间由 CPU 识别：借助镜像自带的 CPU 模型支持所有任务" in chinese
    (cpu_model / "gguf" / "mmproj-hunyuanocr-f16.gguf").unlink()  # half a pair is no CPU model
    assert gpu.banner(gpu_image / "sys", STACK, cpu_model).endswith("only text spotting and plain text.")


def test_tasks_that_need_the_model_say_so(gpu_image, client):
    page = client.get("/").get_data(as_text=True)
    assert "needs the HunyuanOCR model" in page


def test_no_banner_on_a_cpu_image(client):
    page = client.get("/").get_data(as_text=True)
    assert 'id="gpu-banner"' not in page


def test_status_page_shows_the_model_licence_and_notice(gpu_image, client):
    page = client.get("/status").get_data(as_text=True)
    assert 'id="model-license"' in page
    assert "TENCENT HUNYUAN COMMUNITY LICENSE AGREEMENT &lt;test&gt;" in page and "Notice: test copy" in page


def test_banner_sentence_comes_from_appliance_gpu(tmp_path):
    (tmp_path / "sys").mkdir()
    assert gpu.banner(tmp_path / "sys", {}) is None  # cpu image
    assert gpu.banner(tmp_path / "sys", STACK, tmp_path).startswith("No NVIDIA graphics card was found.")


def test_banner_in_the_pages_language(gpu_image, client):
    client.set_cookie("lang", "zh")
    page = client.get("/").get_data(as_text=True)
    assert "未找到 NVIDIA 显卡。在此期间由 CPU 识别" in page and "No NVIDIA graphics card" not in page


def test_every_reason_has_both_languages_with_the_same_fields():
    import string

    for key, (english, chinese) in {**gpu.REASONS, **gpu.MEANWHILE}.items():
        fields = {name for _, name, _, _ in string.Formatter().parse(english) if name}
        assert fields == {name for _, name, _, _ in string.Formatter().parse(chinese) if name}, key
        assert english.endswith(".") and chinese.endswith("。"), key
