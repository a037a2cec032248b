"""The OpenAI-protocol client (vLLM's description) against a fake server (openai_server.py) backed by the tiny model.

vLLM itself is CUDA only, so what is checked here is the client: the request it sends (the official client's shape),
that it gets the same answer the in-process engine gets, that it hangs up on an endless repetition, its errors, the
server's pixel cap, and `auto`'s choice when such a server answers.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import time

import pytest
from openai_server import FakeOpenAIServer
from PIL import Image, ImageDraw

from appliance.jobs import Jobs
from appliance.model_dir import model_info
from appliance.ocr import images, pace, parse
from appliance.ocr.engines import hunyuan, select
from appliance.ocr.engines.openai_client import OpenAIEngine, server_ready
from appliance.ocr.engines.transformers import TransformersEngine
from appliance.ocr.errors import EngineLost, EngineUnavailable
from appliance.ocr.tasks import PROMPTS, Request, Task
from appliance.servers import vllm

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
    server.chunk_delay = 0.0
    return vllm.open_client(tiny_model_dir, url=server.url, max_tokens=MAX_TOKENS)


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


def test_the_answer_streams_to_on_text_while_it_is_written(client, server, page_image):
    """A slow model: on_text sees the answer grow (at once for the first token, then at most every REPORT_EVERY
    seconds), each text a beginning of the final answer."""
    server.chunk_delay = 0.1  # one chunk is one token here
    seen = []
    page = client.recognize(
        page_image, Request.make("text"), on_text=lambda text, tokens: seen.append((time.monotonic(), text, tokens))
    )
    chunks = -(-len(page.raw) // 3)
    assert chunks >= 6, page.raw  # long enough to be seen growing
    assert seen[0][1:] == (page.raw[:3], 1)
    assert all(page.raw.startswith(text) and len(text) == min(3 * tokens, len(page.raw)) for _, text, tokens in seen)
    assert [tokens for _, _, tokens in seen] == sorted({tokens for _, _, tokens in seen})  # growing, never again
    assert len(seen) >= chunks * 0.1 / hunyuan.REPORT_EVERY - 1
    assert all(b - a >= hunyuan.REPORT_EVERY * 0.9 for (a, _, _), (b, _, _) in zip(seen, seen[1:]))


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
        opened.append(vllm.open_client(tiny_model_dir, url=server.url, max_tokens=MAX_TOKENS))
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


def test_the_time_left_of_a_steady_answer_comes_true(tiny_model_dir, tmp_path, page_image):
    """Through the queue and the real client: a model that writes a usual-length answer at a steady pace. Halfway
    through, GET /jobs/<id>'s seconds_left (from this answer's own decode rate) says when the job really ends."""
    usual = pace.ANSWER_TOKENS[Task.FORMULA]
    answer = "".join(f"{i:03d}" for i in range(usual))  # one 3-character chunk per token, never a repetition
    model_id, _ = model_info(tiny_model_dir)
    with FakeOpenAIServer(lambda image, prompt: answer, model_id=model_id, root=str(tiny_model_dir)) as server:
        server.chunk_delay = 0.05  # 20 tokens/s: 7.5 s of decoding
        engine = vllm.open_client(tiny_model_dir, url=server.url, max_tokens=4096)
        jobs = Jobs(tmp_path / "data", lambda report: engine)
        try:
            buf = io.BytesIO()
            page_image.save(buf, format="PNG")
            job = jobs.submit(buf.getvalue(), "formula.png", Request.make("formula"))
            while (live := jobs.live(job.id) or {}).get("tokens", 0) < usual // 2:
                assert jobs.get(job.id).state in ("queued", "running")
                time.sleep(0.02)
            said, asked = live["seconds_left"], time.monotonic()
            assert jobs.wait(job.id, 60).state == "done"
            took = time.monotonic() - asked
        finally:
            jobs.close()
    assert not live["longer_than_usual"] and took > 2
    assert abs(said - took) <= max(1.0, 0.25 * took), (said, took)


def test_server_down(tiny_model_dir):
    url = f"http://127.0.0.1:{free_port()}/v1"
    assert server_ready(url) is False
    with pytest.raises(EngineUnavailable, match="no vLLM server answers"):
        vllm.open_client(tiny_model_dir, url=url)


def test_only_loopback_servers(tiny_model_dir):
    assert server_ready("http://192.0.2.1:8001/v1") is False  # answers at once: not even tried
    with pytest.raises(EngineUnavailable, match="not a loopback address"):
        vllm.open_client(tiny_model_dir, url="http://192.0.2.1:8001/v1")


def test_server_serving_another_model(server, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(server, "model_id", "someone/other-model")
    monkeypatch.setattr(server, "root", "/models/other")
    assert server_ready(server.url)  # it answers...
    with pytest.raises(EngineUnavailable, match="serves someone/other-model, not"):
        vllm.open_client(tiny_model_dir, url=server.url)  # ...but not with our model


def test_client_caps_pages_at_the_servers_pixel_cap(server, tiny_model_dir, tmp_path):
    (tmp_path / "settings.json").write_text(json.dumps({"url": server.url, "max_pixels": 512 * 512}))
    server.requests.clear()
    client = vllm.open_client(tiny_model_dir, url=server.url, max_tokens=MAX_TOKENS, run_dir=tmp_path)
    client.recognize(Image.new("RGB", (2000, 1000), "white"), Request.make("text"))
    sent = vllm_image(server.requests[-1])
    assert sent.width * sent.height <= 512 * 512 and sent.width > 2 * sent.height * 0.95
    # settings written for another server are not ours to follow
    (tmp_path / "settings.json").write_text(json.dumps({"url": "http://127.0.0.1:1/v1", "max_pixels": 512 * 512}))
    assert vllm.open_client(tiny_model_dir, url=server.url, run_dir=tmp_path).max_pixels == images.MODEL_MAX_PIXELS


def test_warm_up_sends_one_short_request(client, server):
    client.warm_up()
    (body,) = server.requests
    assert body["max_tokens"] == 16 and vllm_image(body).size == (256, 256)


def test_auto_with_a_gpu_prefers_a_running_vllm_server(server, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(select, "find_gpu", lambda: ("NVIDIA Test GPU", "NVIDIA GPU found: NVIDIA Test GPU"))
    assert select.choose("auto", tiny_model_dir, server.url).engine == "hunyuan-vllm"
    down = f"http://127.0.0.1:{free_port()}/v1"
    assert select.choose("auto", tiny_model_dir, down).engine == "hunyuan-transformers"

    opened = select.open_engine("auto", tiny_model_dir, vllm_url=server.url)
    assert isinstance(opened, OpenAIEngine) and opened.server is vllm.SERVER
