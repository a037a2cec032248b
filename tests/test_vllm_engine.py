"""The vLLM client against a fake OpenAI-compatible server (tests/openai_server.py) backed by the tiny model.

vLLM itself is CUDA only, so what is checked here is the client: the request it sends (the official client's shape),
that it gets the same answer the in-process engine gets, that it hangs up on an endless repetition, its errors,
the `vllm serve` command line, and `auto`'s choice between the engines.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import sys
import time
from pathlib import Path

import pytest
from openai_server import FakeOpenAIServer
from PIL import Image, ImageDraw

from appliance import gpu
from appliance.ocr import engines, images, parse
from appliance.ocr.engines import vllm
from appliance.ocr.engines.hunyuan import model_info
from appliance.ocr.engines.transformers import TransformersEngine
from appliance.ocr.engines.vllm import VllmEngine
from appliance.jobs import Jobs
from appliance.ocr.errors import EngineLost, EngineUnavailable
from appliance.ocr.tasks import PROMPTS, Request, Task

MAX_TOKENS = 16


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    engine = TransformersEngine(tiny_model_dir, max_new_tokens=MAX_TOKENS)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def server(backend, tiny_model_dir):
    model_id, _ = model_info(tiny_model_dir)
    with FakeOpenAIServer(backend.generate, model_id=model_id, root=str(tiny_model_dir)) as server:
        yield server


@pytest.fixture
def client(server, tiny_model_dir):
    server.requests.clear()
    server.loop_unit = None
    server.fail_with = None
    server.crash_next = 0
    server.client_hung_up.clear()
    return VllmEngine(tiny_model_dir, url=server.url, max_tokens=MAX_TOKENS)


@pytest.fixture
def page_image():
    image = Image.new("RGB", (300, 180), "white")
    ImageDraw.Draw(image).text((20, 80), "Receipt No. 7 (copy)", fill="black")
    return image


def vllm_image(body: dict) -> Image.Image:
    """The page image inside a chat-completions request body."""
    url = body["messages"][1]["content"][0]["image_url"]["url"]
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_same_answer_as_the_in_process_engine(client, backend, page_image):
    request = Request.make("text")
    through_server = client.recognize(page_image, request)
    in_process = backend.recognize(page_image, request)
    assert through_server.raw == in_process.raw
    assert through_server.raw  # the tiny model's noise is not empty, so the comparison says something
    assert client.info.name == "hunyuan-vllm"
    assert client.served_model == model_info(client.model_dir)[0]


def test_request_has_the_official_shape(client, server, page_image):
    client.recognize(page_image, Request.make("spotting"))
    (body,) = server.requests
    assert body["model"] == client.served_model
    system, user = body["messages"]
    assert system == {"role": "system", "content": ""}
    image_part, text_part = user["content"]
    assert text_part == {"type": "text", "text": PROMPTS[Task.SPOTTING]}
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.format == "PNG"
    assert sent.size == images.cap_pixels(page_image).size  # the capped image, losslessly
    assert body["temperature"] == 0 and body["top_k"] == 1
    assert body["repetition_penalty"] == 1.0
    assert body["max_tokens"] == MAX_TOKENS
    assert body["stream"] is True


def test_endless_repetition_is_cut_off_and_cleaned(client, server, page_image):
    server.loop_unit = "Total 42.00 "
    page = client.recognize(page_image, Request.make("text"))
    assert client.last_stopped_looping
    assert server.client_hung_up.wait(10), "the client kept the stream open"
    assert len(page.raw) < 5000  # stopped within a few checks, not after the server's 20 s of repetition
    assert parse.WARN_REPEATED in page.warnings
    assert page.text.count("Total 42.00") == 1


def test_server_error_message_is_passed_on(client, server, page_image):
    server.fail_with = (400, "The decoder prompt (99999 tokens) is longer than the maximum model length")
    with pytest.raises(EngineUnavailable, match=r"HTTP 400: The decoder prompt .* maximum model length"):
        client.recognize(page_image, Request.make("text"))


def test_answer_cut_off_by_a_crash_is_not_taken_for_an_answer(client, server, page_image):
    server.crash_next = 1
    with pytest.raises(EngineLost, match="closed the answer stream before its end"):
        client.recognize(page_image, Request.make("text"))


def test_server_crash_mid_job_puts_the_job_back_and_it_completes(server, tiny_model_dir, tmp_path, page_image):
    """The queue over the real client: the server dies mid-answer, answers again (systemd restarted it), and the
    job is run again on a freshly opened client instead of failing with half an answer."""
    server.requests.clear()
    server.crash_next = 1
    opened = []

    def opener(report):
        opened.append(VllmEngine(tiny_model_dir, url=server.url, max_tokens=MAX_TOKENS))
        return opened[-1]

    jobs = Jobs(tmp_path / "data", opener)
    try:
        buf = io.BytesIO()
        page_image.save(buf, format="PNG")
        job = jobs.wait(jobs.submit(buf.getvalue(), "page.png", Request.make("text")).id, 60)
        assert (job.state, job.retries, len(opened), len(server.requests)) == ("done", 1, 2, 2)
        assert jobs.result(job.id).text == opened[1].recognize(page_image, Request.make("text")).text
    finally:
        jobs.close()


def test_server_down(tiny_model_dir):
    url = f"http://127.0.0.1:{free_port()}/v1"
    assert vllm.server_ready(url) is False
    with pytest.raises(EngineUnavailable, match="no vLLM server answers"):
        VllmEngine(tiny_model_dir, url=url)


def test_only_loopback_servers(tiny_model_dir):
    assert vllm.server_ready("http://192.0.2.1:8001/v1") is False  # answers at once: not even tried
    with pytest.raises(EngineUnavailable, match="not a loopback address"):
        VllmEngine(tiny_model_dir, url="http://192.0.2.1:8001/v1")


def test_server_serving_another_model(server, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(server, "model_id", "someone/other-model")
    monkeypatch.setattr(server, "root", "/models/other")
    assert vllm.server_ready(server.url)  # it answers...
    with pytest.raises(EngineUnavailable, match="serves someone/other-model, not"):
        VllmEngine(tiny_model_dir, url=server.url)  # ...but not with our model


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
    monkeypatch.setattr(vllm, "_vllm_launcher", lambda: [sys.executable, str(Path(__file__).with_name("fake_vllm.py"))])
    seen_steps, log = [], io.StringIO()
    real_write = vllm.write_atomic

    def write_and_remember(path, data):
        seen_steps.append(json.loads(data)) if path.name == "progress.json" else None
        real_write(path, data)

    monkeypatch.setattr(vllm, "write_atomic", write_and_remember)
    port = free_port()
    process = vllm.start_server(tiny_model_dir, port, max_pixels=1280 * 1280, timeout=60, log=log, run_dir=tmp_path)
    try:
        assert vllm.server_ready(f"http://127.0.0.1:{port}/v1")
        assert [step["percent"] for step in seen_steps] == [5, 10, 35, 60, 65, 80, 90, 95]
        assert [step["step"] for step in seen_steps][:3] == ["vllm_engine", "vllm_weights", "vllm_weights"]
        assert vllm.read_run_file("progress.json", tmp_path) == {"step": "vllm_api", "percent": 95}
        assert any(line.startswith("Loading safetensors checkpoint shards:  50% Completed | 1/2")
                   for line in log.getvalue().splitlines())  # each carriage-return redraw is a line of its own
        settings = vllm.read_run_file("settings.json", tmp_path)
        assert settings["url"] == f"http://127.0.0.1:{port}/v1" and settings["max_pixels"] == 1280 * 1280
    finally:
        process.kill()
        process.wait(10)


def started_as(log: io.StringIO) -> dict:
    """How fake_vllm.py was started, from its first line (the output is followed by a thread: wait for it)."""
    deadline = time.monotonic() + 10
    while "FAKE-VLLM " not in log.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(line for line in log.getvalue().splitlines() if line.startswith("FAKE-VLLM "))
    return json.loads(line[len("FAKE-VLLM "):])


def test_server_runs_compiled_only_from_a_compile_cache(tiny_model_dir, monkeypatch, tmp_path):
    """Eager by default; given the image's compile cache for this card, vLLM runs compiled from a writable copy."""
    monkeypatch.setattr(vllm, "_vllm_launcher", lambda: [sys.executable, str(Path(__file__).with_name("fake_vllm.py"))])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "state-cache"))
    monkeypatch.delenv("VLLM_CACHE_ROOT", raising=False)
    bundled = tmp_path / "image-cache" / "sm_89"
    (bundled / "torch_compile_cache" / "abc").mkdir(parents=True)
    (bundled / "torch_compile_cache" / "abc" / "graph.py").write_text("compiled")
    for cache in (None, gpu.compile_cache_for("8.9", tmp_path / "image-cache")):
        log, run_dir = io.StringIO(), tmp_path / f"run-{bool(cache)}"
        run_dir.mkdir()
        process = vllm.start_server(tiny_model_dir, free_port(), timeout=60, log=log, run_dir=run_dir,
                                    compile_cache=cache)
        try:
            started = started_as(log)
        finally:
            process.kill()
            process.wait(10)
        assert ("--enforce-eager" in started["args"]) == (cache is None)
        assert vllm.read_run_file("settings.json", run_dir)["compiled"] == (cache is not None)
        if cache:
            assert started["cache_root"] == str(tmp_path / "state-cache" / "vllm")
            assert (tmp_path / "state-cache/vllm/torch_compile_cache/abc/graph.py").read_text() == "compiled"
    assert gpu.compile_cache_for("9.0", tmp_path / "image-cache") is None  # another architecture: eager
    assert gpu.compile_cache_for(None, tmp_path / "image-cache") is None  # nvidia-smi could not say


def test_client_caps_pages_at_the_servers_pixel_cap(server, tiny_model_dir, tmp_path):
    (tmp_path / "settings.json").write_text(json.dumps({"url": server.url, "max_pixels": 512 * 512}))
    server.requests.clear()
    client = VllmEngine(tiny_model_dir, url=server.url, max_tokens=MAX_TOKENS, run_dir=tmp_path)
    client.recognize(Image.new("RGB", (2000, 1000), "white"), Request.make("text"))
    sent = vllm_image(server.requests[-1])
    assert sent.width * sent.height <= 512 * 512 and sent.width > 2 * sent.height * 0.95
    # settings written for another server are not ours to follow
    (tmp_path / "settings.json").write_text(json.dumps({"url": "http://127.0.0.1:1/v1", "max_pixels": 512 * 512}))
    assert VllmEngine(tiny_model_dir, url=server.url, run_dir=tmp_path).max_pixels == images.MODEL_MAX_PIXELS


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

    vllm.wait_for_server("http://127.0.0.1:9/v1", lambda words, **extra: heard.append((words, extra)),
                         state=poll_then_start_up, poll=0, run_dir=tmp_path)
    (first, _), (words, extra) = heard
    assert first.startswith("NVIDIA driver loaded; waiting for the model server (")
    assert words.startswith("loading HunyuanOCR onto the GPU (")
    assert extra == {"step": "vllm_weights", "step_values": {}, "percent": 35}


def test_warm_up_sends_one_short_request(client, server):
    client.warm_up()
    (body,) = server.requests
    assert body["max_tokens"] == 16 and vllm_image(body).size == (256, 256)


def test_auto_picks_cpu_without_a_gpu(tiny_model_dir):
    if engines.find_gpu()[0] is not None:
        pytest.skip("this machine has an NVIDIA GPU")
    assert engines.choose("auto", tiny_model_dir).engine == "cpu"


def test_auto_with_a_gpu_prefers_a_running_vllm_server(server, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(engines, "find_gpu", lambda: ("NVIDIA Test GPU", "NVIDIA GPU found: NVIDIA Test GPU"))
    assert engines.choose("auto", tiny_model_dir, server.url).engine == "hunyuan-vllm"
    down = f"http://127.0.0.1:{free_port()}/v1"
    assert engines.choose("auto", tiny_model_dir, down).engine == "hunyuan-transformers"

    opened = engines.open_engine("auto", tiny_model_dir, vllm_url=server.url)
    assert isinstance(opened, VllmEngine)
