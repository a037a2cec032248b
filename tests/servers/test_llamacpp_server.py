"""The real llama-server (the host build of the pinned sdist) serving the tiny real-layout checkpoint's GGUF files
through the one OpenAI-protocol client: its start-up steps, every task with an image, streaming, the pixel cap, and
the server killed mid-answer while a job runs (the job is queued again first and finishes once the server is back).
"""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from llama_fixtures import TEST_MAX_PIXELS, free_port, server_processes
from PIL import Image, ImageDraw

from appliance.jobs import Jobs
from appliance.ocr.engines.openai_client import OpenAIEngine, server_ready
from appliance.ocr.errors import EngineLost, EngineUnavailable
from appliance.ocr.tasks import Request, Task
from appliance.servers import llamacpp, process


def page(width=900, height=1200) -> Image.Image:
    """A page with a few lines of text (the model's answers are noise; the image must still reach it)."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for row in range(8):
        draw.text((40, 40 + row * 60), f"Line {row}: invoice 2026-12-{row + 1:02d} total {row * 17}.00", fill="black")
    return image


def requests_for_every_task():
    for task in Task:
        if task is Task.EXTRACT:
            yield Request.make(task, fields="name,date,total")
        elif task is Task.TRANSLATE:
            yield Request.make(task, target_lang="en")
        else:
            yield Request.make(task)


def test_start_up_steps_in_order_and_settings_for_clients(llama_server):
    """Every START_PHASES pattern matches a line of the real server's log, in the order of the list, and the run
    directory says what the client needs (url, pixel cap) and where the start-up ended."""
    url, run_dir, log_path = llama_server
    phases = [phase for line in log_path.read_text().splitlines() if (phase := llamacpp.start_phase(line))]
    expected = [(step, percent) for _, step, percent in llamacpp.START_PHASES]
    assert [phase for i, phase in enumerate(phases) if phase not in phases[:i]] == expected
    assert process.read_run_file(process.PROGRESS, run_dir) == {"step": "llama_api", "percent": 95}
    settings = process.read_run_file(process.SETTINGS, run_dir)
    assert settings["url"] == url and settings["max_pixels"] == TEST_MAX_PIXELS and settings["threads"] == 1


def test_every_task_through_the_client_with_an_image(llama_server, hunyuan_gguf):
    url, run_dir, _ = llama_server
    engine = llamacpp.open_client(hunyuan_gguf, url=url, run_dir=run_dir, max_tokens=48)
    assert isinstance(engine, OpenAIEngine) and engine.info.name == "hunyuan-llamacpp"
    assert engine.info.device == f"llama.cpp {url}"
    image = page()
    for request in requests_for_every_task():
        result = engine.recognize(image, request)
        assert result is not None
        if engine.last_stopped_looping:  # the repetition guard closed the stream before the counts came
            continue
        usage = engine.last_usage
        # The image's tokens reached the model: far more prompt tokens than the prompt text has.
        assert usage["prompt_tokens"] > 200, (request.task, usage)
        assert 0 < usage["completion_tokens"] <= 48
        assert engine.last_timings["prompt_n"] > 0


def test_answers_are_streamed(llama_server, hunyuan_gguf):
    """The answer arrives as many server-sent chunks, the last one with the token counts, then [DONE]."""
    url, run_dir, _ = llama_server
    engine = llamacpp.open_client(hunyuan_gguf, url=url, run_dir=run_dir)
    # (A blank page and the plain-text prompt: the tiny model answers it with text, not with special tokens,
    # which llama-server does not stream.)
    body = engine.request_body(Image.new("RGB", (900, 1200), "white"), Request.make("text").prompt(), max_tokens=32)
    connection = http.client.HTTPConnection("127.0.0.1", int(url.split(":")[2].split("/")[0]), timeout=120)
    try:
        connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("Content-Type").startswith("text/event-stream")
        events = [line[5:].strip() for line in response if line.startswith(b"data:")]
    finally:
        connection.close()
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks if c.get("choices")]
    assert len([d for d in deltas if d]) >= 8
    assert chunks[-1]["usage"]["completion_tokens"] == 32


def test_the_answer_reaches_on_text_while_it_is_written(llama_server, hunyuan_gguf):
    """The real server's stream through the client: the first token's text comes at once, later ones at most every
    REPORT_EVERY seconds, each a beginning of the final answer, with a token count that ends at the server's."""
    url, run_dir, _ = llama_server
    engine = llamacpp.open_client(hunyuan_gguf, url=url, run_dir=run_dir)
    seen = []
    prompt = Request.make("text").prompt()
    answer = engine.generate(page(), prompt, max_tokens=64, on_text=lambda text, tokens: seen.append((text, tokens)))
    assert seen and seen[0][1] == 1 and answer.startswith(seen[0][0])
    assert all(answer.startswith(text) for text, _ in seen)
    tokens = [count for _, count in seen]
    assert tokens == sorted(set(tokens))
    if not engine.last_stopped_looping:  # the repetition guard hangs up before the counts come
        assert tokens[-1] <= engine.last_usage["completion_tokens"]


def test_the_pixel_cap_reaches_the_server(llama_server, hunyuan_gguf):
    """The server's settings.json caps the client: a 2000x1500 scan is sent at <= TEST_MAX_PIXELS, so the server
    sees ~400 image tokens, not the ~2900 it makes of the same scan uncapped."""
    url, run_dir, _ = llama_server
    scan = page(2000, 1500)
    capped = llamacpp.open_client(hunyuan_gguf, url=url, run_dir=run_dir, max_tokens=4)
    assert capped.max_pixels == TEST_MAX_PIXELS
    capped.recognize(scan, Request.make("text"))
    uncapped = llamacpp.open_client(hunyuan_gguf, url=url, run_dir=run_dir.parent / "elsewhere", max_tokens=4)
    uncapped.recognize(scan, Request.make("text"))
    cap_tokens = TEST_MAX_PIXELS // (32 * 32)
    assert cap_tokens * 0.8 < capped.last_usage["prompt_tokens"] < cap_tokens * 1.3
    assert uncapped.last_usage["prompt_tokens"] > 2000 * 1500 // (32 * 32)


def test_a_client_for_another_model_is_refused(llama_server, hunyuan_checkpoint):
    url, run_dir, _ = llama_server
    with pytest.raises(EngineUnavailable, match="has no GGUF files"):
        llamacpp.open_client(hunyuan_checkpoint, url=url, run_dir=run_dir)


@pytest.fixture
def server_log(tmp_path):
    """A log file for servers a test starts, open until the test's end (their output is followed until they die)."""
    with open(tmp_path / "llama-server.log", "a") as log:
        yield log


def test_server_killed_mid_answer_job_requeued_first_and_finished_when_back(hunyuan_gguf, tmp_path, server_log):
    """kill -9 of llama-server while it answers: the client raises EngineLost, the job goes back to the head of the
    queue, the queue opens the engine again (here: starts the server again, as systemd's Restart= does on the
    image), and both jobs finish, the interrupted one first. No llama-server is left behind."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    servers = []

    def open_engine(report):
        if not server_ready(url):
            servers.append(llamacpp.start_server(hunyuan_gguf, port, threads=1, log=server_log, run_dir=tmp_path))
        return llamacpp.open_client(hunyuan_gguf, url=url, run_dir=tmp_path, max_tokens=4096)

    jobs = Jobs(tmp_path / "data", open_engine)
    try:
        assert jobs.wait_engine(300)["ready"]
        first_server = servers[0]
        # ~2500 image tokens on one thread: seconds of work before the answer can end
        first = jobs.submit(png(page(1600, 1600)), "first.png", Request.make("doc"))
        second = jobs.submit(png(page(640, 480)), "second.png", Request.make("text"))
        log_path = Path(server_log.name)
        _wait_for(lambda: "processing task" in log_path.read_text(), 120)  # llama-server took the first page
        os.kill(first_server.pid, signal.SIGKILL)
        first_server.wait(timeout=30)
        first, second = jobs.wait(first.id, 600), jobs.wait(second.id, 600)
        assert (first.state, first.retries, second.state, second.retries) == ("done", 1, "done", 0)
        assert first.finished <= second.started  # the interrupted job went back to the head of the queue
        assert len(servers) == 2
    finally:
        jobs.close(timeout=30)
        for server in servers:
            if server.poll() is None:
                server.terminate()
                server.wait(timeout=30)
    assert server_processes(str(port)) == []


def test_engine_lost_when_the_server_dies_mid_stream(hunyuan_gguf, tmp_path, server_log):
    port = free_port()
    server = llamacpp.start_server(hunyuan_gguf, port, threads=1, log=server_log)
    try:
        engine = llamacpp.open_client(hunyuan_gguf, url=f"http://127.0.0.1:{port}/v1", run_dir=tmp_path)
        killer = threading.Timer(1.0, os.kill, (server.pid, signal.SIGKILL))
        killer.start()
        with pytest.raises(EngineLost, match="llama.cpp server"):
            engine.generate(page(1600, 1600), Request.make("doc").prompt(), max_tokens=4096)
        killer.join()
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(timeout=30)
    assert server_processes(str(port)) == []


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _wait_for(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
