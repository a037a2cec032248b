"""HunyuanOCR on the CPU through llama.cpp in `auto`: the choice (no usable GPU -> llama.cpp when its files are here
and its server answers or starts; else rapidocr with the reason), the routing (spotting and plain text stay with
rapidocr), the page times on this PC, the free-memory check, and the GPU question appliance-llama.service asks.
The real llama-server (tests/llama_fixtures.py) serves the tiny real-layout checkpoint's GGUF files."""

from __future__ import annotations

import json
import shutil

import pytest
from fake_engine import FakeEngine
from PIL import Image, ImageDraw

import appliance.gpu.__main__ as gpu_main
from appliance.jobs import Jobs
from appliance.ocr import pace
from appliance.ocr.engines import select
from appliance.ocr.engines.routed import RoutedEngine, serving
from appliance.ocr.result import EngineInfo
from appliance.ocr.tasks import Request, Task
from appliance.servers import llamacpp, ram

NO_GPU = (None, "no NVIDIA kernel driver loaded")


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(select, "find_gpu", lambda: NO_GPU)


@pytest.fixture
def full_model_dir(hunyuan_checkpoint, hunyuan_gguf, tmp_path):
    """The image's layout: the checkpoint's files and gguf/ with the GGUF pair."""
    d = tmp_path / "model"
    shutil.copytree(hunyuan_checkpoint, d)
    (d / "gguf").mkdir()
    for f in hunyuan_gguf.glob("*.gguf"):
        (d / "gguf" / f.name).symlink_to(f)
    return d


def page() -> Image.Image:
    image = Image.new("RGB", (640, 480), "white")
    ImageDraw.Draw(image).text((40, 40), "Invoice 2026-12-02 total 17.00", fill="black")
    return image


# --- the choice -------------------------------------------------------------------------------------------------


def test_auto_picks_llamacpp_when_its_server_answers(no_gpu, llama_server, hunyuan_gguf):
    url, _, _ = llama_server
    choice = select.choose("auto", hunyuan_gguf, llama_url=url)
    assert choice.engine == "hunyuan-llamacpp" and choice.gpu is None
    assert url in choice.reason and "no NVIDIA kernel driver loaded" in choice.reason


def test_auto_without_gguf_files_or_server_stays_on_rapidocr(no_gpu, tmp_path, hunyuan_gguf, monkeypatch):
    assert select.choose("auto", tmp_path, llama_url="http://127.0.0.1:9/v1").engine == "cpu"  # no GGUF files
    monkeypatch.setattr(llamacpp, "unit_state", lambda: "inactive")
    monkeypatch.setattr(ram, "available_bytes", lambda meminfo=None: 64 * 2**30)
    choice = select.choose("auto", hunyuan_gguf, llama_url="http://127.0.0.1:9/v1")
    assert choice.engine == "cpu" and "journalctl -u appliance-llama.service" in choice.reason
    monkeypatch.setattr(llamacpp, "unit_state", lambda: "activating")  # the image's unit is loading the model
    assert select.choose("auto", hunyuan_gguf, llama_url="http://127.0.0.1:9/v1").engine == "hunyuan-llamacpp"


def test_a_gpu_image_whose_vllm_is_off_falls_back_to_llamacpp(monkeypatch, llama_server, full_model_dir):
    url, _, _ = llama_server
    monkeypatch.setattr(select, "find_gpu", lambda: ("NVIDIA RTX 4090", "NVIDIA GPU found: NVIDIA RTX 4090"))
    monkeypatch.setattr(select, "load_stack_info", lambda path=None: {"engines": ["hunyuan-vllm"]})
    monkeypatch.setattr(select.vllm, "unit_state", lambda: "failed")
    choice = select.choose("auto", full_model_dir, vllm_url="http://127.0.0.1:9/v1", llama_url=url)
    assert choice.engine == "hunyuan-llamacpp" and choice.gpu == "NVIDIA RTX 4090"
    assert "appliance-vllm.service" in choice.reason and url in choice.reason


def test_not_enough_free_memory_is_said_plainly(no_gpu, hunyuan_gguf, monkeypatch, tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        4000000 kB\nMemFree:          100000 kB\nMemAvailable:      20480 kB\n")
    need = ram.needed_bytes(hunyuan_gguf, llamacpp.DEFAULT_CTX_SIZE)
    assert need > ram.RESERVE  # the files and the cache on top of the compute reserve
    reason = ram.shortfall(hunyuan_gguf, llamacpp.DEFAULT_CTX_SIZE, meminfo)
    assert reason.startswith("HunyuanOCR on the CPU needs about") and "0.0 GB free" in reason
    meminfo.write_text("MemAvailable:   64000000 kB\n")
    assert ram.shortfall(hunyuan_gguf, llamacpp.DEFAULT_CTX_SIZE, meminfo) is None
    monkeypatch.setattr(ram, "MEMINFO", tmp_path / "meminfo-short")
    (tmp_path / "meminfo-short").write_text("MemAvailable: 1024 kB\n")
    monkeypatch.setattr(llamacpp, "unit_state", lambda: "inactive")
    choice = select.choose("auto", hunyuan_gguf, llama_url="http://127.0.0.1:9/v1")
    assert choice.engine == "cpu" and "needs about" in choice.reason
    assert ram.main([str(hunyuan_gguf)]) == 1  # the unit's ExecCondition: skipped, with the sentence


def test_kv_cache_from_the_real_layout_config(hunyuan_checkpoint):
    config = json.loads((hunyuan_checkpoint / "config.json").read_text())
    per_token = config["num_hidden_layers"] * config["num_key_value_heads"] * config["head_dim"] * 4
    assert ram.kv_cache_bytes(hunyuan_checkpoint, 100) == per_token * 100


def test_llama_unit_steps_aside_only_when_a_gpu_serves(monkeypatch, capsys):
    monkeypatch.setattr(gpu_main, "load_stack_info", lambda: {})  # a cpu image
    assert gpu_main.main(["cpu-serves"]) == 0
    monkeypatch.setattr(gpu_main, "load_stack_info", lambda: {"cuda": "12.8"})  # a gpu image ...
    monkeypatch.setattr(gpu_main, "banner", lambda: "no NVIDIA card")  # ... falling back
    assert gpu_main.main(["cpu-serves"]) == 0
    monkeypatch.setattr(gpu_main, "banner", lambda: None)  # ... whose card serves
    assert gpu_main.main(["cpu-serves"]) == 1 and "usable NVIDIA GPU" in capsys.readouterr().err


# --- open_engine: the routing and the page times ----------------------------------------------------------------


def test_open_engine_routes_spotting_and_text_to_rapidocr(no_gpu, llama_server, hunyuan_gguf):
    url, _, _ = llama_server
    engine = select.open_engine("auto", hunyuan_gguf, llama_url=url)
    try:
        assert isinstance(engine, RoutedEngine) and engine.tasks == frozenset(Task)
        assert serving(engine, Task.SPOTTING).info.name == "cpu" and serving(engine, Task.TEXT).info.name == "cpu"
        assert serving(engine, Task.DOC).info.name == "hunyuan-llamacpp" == engine.info.name
        assert select.FAST_CPU_TASKS == {Task.SPOTTING, Task.TEXT}
        # the warm-up's own timings, scaled to a page at this server's cap: a figure for every task, larger for
        # the long answers
        seconds = engine.page_seconds
        assert set(seconds) == {t.value for t in Task} and all(s > 0 for s in seconds.values())
        assert seconds["doc"] > seconds["extract"]
        doc = engine.recognize(page(), Request.make(Task.DOC))
        text = engine.recognize(page(), Request.make(Task.TEXT))
        assert doc.markdown is not None and "Invoice" in text.text  # rapidocr reads the line itself
    finally:
        engine.close()
    explicit = select.open_engine("hunyuan-llamacpp", hunyuan_gguf, llama_url=url)
    try:
        assert not isinstance(explicit, RoutedEngine) and Task.TEXT in explicit.tasks  # the user's pick: all tasks
    finally:
        explicit.close()


def test_jobs_name_the_engine_that_ran_each_task_and_measure_its_pages(tmp_path):
    model, fast = FakeEngine(), FakeEngine(tasks={Task.SPOTTING, Task.TEXT})
    model.info, fast.info = EngineInfo("hunyuan-llamacpp", "m"), EngineInfo("cpu", "rapidocr")
    model.page_seconds = {"doc": 42.0, "text": 40.0}
    routed = RoutedEngine(model, {Task.TEXT: fast, Task.SPOTTING: fast})
    jobs = Jobs(tmp_path / "jobs", lambda report: routed)
    try:
        status = jobs.wait_engine(30)
        assert status["page_seconds"]["doc"] == {"seconds": 42.0, "measured": False}
        assert "text" not in status["page_seconds"]  # rapidocr's figure only once it has read a page
        image = tmp_path / "page.png"
        page().save(image)
        for task in (Task.DOC, Task.TEXT):
            job = jobs.submit(image, "page.png", Request.make(task))
            assert jobs.wait(job.id, 30).state == "done"
            assert jobs.get(job.id).engine == ("cpu" if task is Task.TEXT else "hunyuan-llamacpp")
        figures = jobs.engine_status()["page_seconds"]
        assert figures["doc"]["measured"] and figures["text"]["measured"]
        assert model.calls == 1 and fast.calls == 1
    finally:
        jobs.close()


def test_page_time_from_timings():
    timings = {"prompt_per_token_ms": 40.0, "predicted_per_second": 20.0}
    figures = pace.from_timings(timings, 1024 * 1024)
    assert figures["doc"] == round(1024 * 40 / 1000 + 1000 / 20, 1)
    assert pace.from_timings({}, 1024 * 1024) == {} and pace.from_timings(None, 1) == {}
    assert pace.from_jobs([("doc", 90.0, 2), ("doc", 40.0, 1), ("text", 0, 1)]) == {"doc": 42.5}
