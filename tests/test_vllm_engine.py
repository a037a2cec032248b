"""The vLLM client against a fake OpenAI-compatible server (tests/openai_server.py) backed by the tiny model.

vLLM itself is CUDA only, so what is checked here is the client: the request it sends (the official client's shape),
that it gets the same answer the in-process engine gets, that it hangs up on an endless repetition, its errors,
the `vllm serve` command line, and `auto`'s choice between the engines.
"""

from __future__ import annotations

import base64
import io
import socket

import pytest
from openai_server import FakeOpenAIServer
from PIL import Image, ImageDraw

from appliance.ocr import engines, images, parse
from appliance.ocr.engines import vllm
from appliance.ocr.engines.hunyuan import model_info
from appliance.ocr.engines.transformers import TransformersEngine
from appliance.ocr.engines.vllm import VllmEngine
from appliance.ocr.errors import EngineUnavailable
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
    server.client_hung_up.clear()
    return VllmEngine(tiny_model_dir, url=server.url, max_tokens=MAX_TOKENS)


@pytest.fixture
def page_image():
    image = Image.new("RGB", (300, 180), "white")
    ImageDraw.Draw(image).text((20, 80), "Receipt No. 7 (copy)", fill="black")
    return image


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
