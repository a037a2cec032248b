"""The home page while the engine starts (a start screen with the engine's own progress words, no upload form),
when it failed (the reason in one sentence), and when a GPU engine was chosen but the CPU engine runs instead."""

from __future__ import annotations

import json
import re
import threading

import pytest
from fake_engine import FakeEngine

from appliance.jobs import Jobs
from appliance.ocr import steps
from appliance.ocr.engines.select import Choice
from appliance.ocr.errors import EngineUnavailable
from webui import create_app

EN = {"Accept-Language": "en"}


@pytest.fixture
def starting(tmp_path):
    """An app whose engine is still loading until `gate` opens; it has said what it is doing."""
    gate, reported = threading.Event(), threading.Event()

    def opener(progress):
        progress("loading the model weights (2 of 4)")
        reported.set()
        assert gate.wait(20)
        return FakeEngine()

    jobs = Jobs(tmp_path / "data", opener)
    assert reported.wait(10)
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "ENGINE": "cpu", "JOBS": jobs, "TESTING": True})
    yield app, gate
    gate.set()
    jobs.close(timeout=5)


def test_start_screen_while_loading_then_the_form(starting):
    app, gate = starting
    client = app.test_client()
    html = client.get("/", headers=EN).get_data(as_text=True)
    assert 'id="engine-splash"' in html and "The OCR engine is starting" in html
    assert '<p class="splash-progress" id="engine-progress">loading the model weights (2 of 4)</p>' in html
    assert 'data-engine-state="loading" data-health-url="/health"' in html and "s so far" in html
    assert 'id="upload-form"' not in html  # nothing to upload into yet
    health = client.get("/health").get_json()["engine"]
    assert health["state"] == "loading" and health["progress"] == "loading the model weights (2 of 4)"
    assert "识别引擎正在启动" in client.get("/", headers={"Accept-Language": "zh"}).get_data(as_text=True)
    gate.set()
    assert app.extensions["backend"].jobs.wait_engine(10)["ready"]
    html = client.get("/", headers=EN).get_data(as_text=True)
    assert 'id="upload-form"' in html and "engine-splash" not in html and "data-engine-state" not in html


def test_start_up_steps_in_the_pages_language(tmp_path):
    """A step the engine reports by its key (appliance.ocr.steps) is said in the page's language; the API keeps the
    English words with their detail."""
    reported, gate = threading.Event(), threading.Event()

    def opener(progress):
        steps.report(progress, "vllm_weights", "12 s", percent=35)
        reported.set()
        assert gate.wait(20)
        return FakeEngine()

    jobs = Jobs(tmp_path / "data", opener)
    try:
        assert reported.wait(10)
        client = create_app({"DATA_DIR": str(tmp_path / "data"), "ENGINE": "cpu", "JOBS": jobs}).test_client()
        health = client.get("/health").get_json()["engine"]
        assert health["progress"] == "loading HunyuanOCR onto the GPU (12 s)" and health["step"] == "vllm_weights"
        assert ">loading HunyuanOCR onto the GPU</p>" in client.get("/", headers=EN).get_data(as_text=True)
        zh = client.get("/", headers={"Accept-Language": "zh"}).get_data(as_text=True)
        assert ">正在将 HunyuanOCR 载入 GPU</p>" in zh
        script_texts = json.loads(
            re.search(r'<script type="application/json" id="messages">(.*?)</script>', zh).group(1)
        )
        assert script_texts["steps"]["vllm_api"] == "正在启动模型服务接口"  # what the page says as it follows /health
    finally:
        gate.set()
        jobs.close(timeout=5)


def test_every_step_is_said_in_both_languages():
    for key, (en, zh) in steps.STEPS.items():
        assert en and zh and set(re.findall(r"\{\w+\}", en)) == set(re.findall(r"\{\w+\}", zh)), key


def test_failed_engine_says_why_in_one_sentence(tmp_path):
    def broken(report):
        raise EngineUnavailable("hunyuan-vllm", "no NVIDIA GPU was found\nTraceback (most recent call last): ...")

    jobs = Jobs(tmp_path / "data", broken)
    jobs.wait_engine(10)
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "ENGINE": "cpu", "JOBS": jobs, "TESTING": True})
    try:
        html = app.test_client().get("/", headers=EN).get_data(as_text=True)
        assert 'id="engine-failed"' in html and "The OCR engine did not start" in html
        reason = html.split('id="engine-reason">', 1)[1].split("</p>", 1)[0]
        assert "no NVIDIA GPU was found" in reason and "Traceback" not in reason
        assert 'id="upload-form"' not in html and 'href="/status"' in html
    finally:
        jobs.close(timeout=5)


def test_cpu_fallback_says_which_tasks_still_work(app, client, monkeypatch):
    """The GPU engine was chosen, the CPU engine is what runs (the GPU module reports this): say so on the home
    page and list the tasks that work; the form stays usable."""
    app.extensions["backend"].engine_choice = Choice("hunyuan-vllm", "NVIDIA GPU found", "H100")
    jobs = app.extensions["backend"].jobs
    real = jobs.engine_status()
    cpu = {**real, "info": {**real["info"], "name": "cpu"}, "tasks": ["spotting", "text"]}
    monkeypatch.setattr(jobs, "engine_status", lambda: {**cpu, "fallback": "the vLLM server did not answer"})
    html = client.get("/", headers=EN).get_data(as_text=True)
    note = html.split('id="engine-fallback">', 1)[1].split("</div>", 1)[0]
    assert note == (
        "The hunyuan-vllm engine is not running (the vLLM server did not answer); the cpu engine runs instead. "
        "These tasks work: Text with positions, Plain text."
    )
    assert 'id="upload-form"' in html
    # A failed state with some engine still running (the same report, as 'failed'): the reason, then what works.
    monkeypatch.setattr(jobs, "engine_status", lambda: {**cpu, "state": "failed", "error": "CUDA out of memory"})
    html = client.get("/", headers=EN).get_data(as_text=True)
    assert "The OCR engine did not start: CUDA out of memory. These tasks still work with the cpu engine: " in html
    assert 'id="upload-form"' in html


def mounts_file(tmp_path, data_dir: str, fstype: str) -> str:
    path = tmp_path / "mounts"
    device = "tmpfs" if fstype == "tmpfs" else "/dev/sdb3"
    path.write_text(
        "/dev/sr0 /run/live/medium iso9660 ro 0 0\n"  # booted from the appliance's medium
        f"overlay / overlay rw,upperdir=/run/live/overlay/rw 0 0\n{device} {data_dir} {fstype} rw 0 0\n"
    )
    return str(path)


def test_status_says_when_data_is_in_ram_and_the_home_page_warns(app, client, tmp_path):
    app.config["MOUNTS_FILE"] = mounts_file(tmp_path, app.config["DATA_DIR"], "tmpfs")
    app.config["MEDIUM_MARKER"] = str(tmp_path / "no-marker")
    html = client.get("/status", headers=EN).get_data(as_text=True)
    persistence = html.split('id="data-persistence">', 1)[1].split("</dd>", 1)[0]
    assert "Running from RAM: results are lost at power-off." in persistence
    assert f"{app.config['DATA_DIR']} (tmpfs on tmpfs)" in persistence
    medium = html.split('id="medium-state">', 1)[1].split("</dd>", 1)[0]
    assert "not checked on this boot" in medium and "check medium integrity" in medium
    assert 'id="ram-warning"' in client.get("/", headers=EN).get_data(as_text=True)
    assert "正在内存中运行：断电后结果会丢失" in client.get("/status", headers={"Accept-Language": "zh"}).get_data(
        as_text=True
    )


def test_status_on_a_data_partition_with_a_verified_medium(app, client, tmp_path):
    app.config["MOUNTS_FILE"] = mounts_file(tmp_path, app.config["DATA_DIR"], "ext4")
    marker = tmp_path / "medium-verified"
    marker.write_text("ok: sha256 of 812 files\n")
    app.config["MEDIUM_MARKER"] = str(marker)
    html = client.get("/status", headers=EN).get_data(as_text=True)
    assert "Yes: stored on a disk, not in RAM" in html and "(ext4 on /dev/sdb3)" in html
    assert '<span class="badge medium-verified">verified</span> sha256 of 812 files' in html
    assert 'id="ram-warning"' not in client.get("/", headers=EN).get_data(as_text=True)
    marker.write_text("failed: live/filesystem.squashfs does not match\n")
    html = client.get("/status", headers=EN).get_data(as_text=True)
    assert "check failed</span> live/filesystem.squashfs does not match" in html


def test_status_shows_the_fallback_sentence(app, client, monkeypatch):
    app.extensions["backend"].engine_choice = Choice("hunyuan-vllm", "NVIDIA H100 found; vLLM server answers", "H100")
    jobs = app.extensions["backend"].jobs
    real = jobs.engine_status()
    cpu = {**real, "info": {**real["info"], "name": "cpu"}, "tasks": ["spotting", "text"], "error": "CUDA error"}
    monkeypatch.setattr(jobs, "engine_status", lambda: cpu)
    html = client.get("/status", headers=EN).get_data(as_text=True)
    why = html.split('id="engine-why">', 1)[1].split("</dd>", 1)[0]
    assert why.startswith("NVIDIA H100 found; vLLM server answers")
    assert "The hunyuan-vllm engine is not running (CUDA error); the cpu engine runs instead." in why
