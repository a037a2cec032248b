"""HunyuanOCR through a vLLM server on loopback: the fast GPU engine, plus starting that server.

The client uses only the standard library, so the appliance needs no extra package to talk to the server. Requests
are the official client's: empty system message, the image as a base64 data URL, the fixed prompt, greedy. Answers
are streamed, and the stream is closed as soon as parse.is_looping says the tail is an endless repetition: vLLM
aborts a request whose client disconnects, so a looping page costs seconds instead of the whole token budget.

The server listens on 127.0.0.1:8001 (8000 is the appliance's own API) and is never reached beyond loopback.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

from PIL import Image

from appliance.files import write_atomic
from appliance.ocr import images, parse, steps
from appliance.ocr.engines.hunyuan import HunyuanEngine, check_model_dir, model_info
from appliance.ocr.errors import EngineLost, EngineUnavailable
from appliance.ocr.tasks import PROMPTS, Task

NAME = "hunyuan-vllm"
DEFAULT_URL = "http://127.0.0.1:8001/v1"
DEFAULT_MAX_MODEL_LEN = 16384  # 4096 image tokens at the 2048*2048 cap + 4096 answer tokens, with room to spare
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
CHECK_EVERY_CHARS = 64  # how much new answer text between two looping checks while streaming

# No proxy: an http_proxy in the environment must not see (or break) loopback traffic.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _is_loopback(url: str) -> bool:
    return urllib.parse.urlsplit(url).hostname in LOOPBACK_HOSTS


# What talking to a server on loopback can raise: refused/reset/timeout (OSError, URLError), bad JSON or URL
# (ValueError), a broken HTTP exchange.
_SERVER_ERRORS = (OSError, ValueError, http.client.HTTPException)


def _get_models(url: str, timeout: float) -> list[dict]:
    """The entries of GET {url}/models; ValueError when the answer is not an OpenAI model list."""
    with _opener.open(f"{url.rstrip('/')}/models", timeout=timeout) as response:
        data = json.loads(response.read())
    models = data.get("data") if isinstance(data, dict) else None
    if not isinstance(models, list):
        raise ValueError("not an OpenAI-compatible /models answer")  # noqa: TRY004 (bad data, not a bad call)
    return [entry for entry in models if isinstance(entry, dict)]


def server_ready(url: str = DEFAULT_URL, timeout: float = 1.0) -> bool:
    """True when an OpenAI-compatible server on loopback answers GET {url}/models with a model. Never raises."""
    if not _is_loopback(url):
        return False
    try:
        return bool(_get_models(url, timeout))
    except _SERVER_ERRORS:  # all mean "not ready"
        return False


def _server_message(body: bytes) -> str:
    """The error text from an OpenAI-style error body, or the body itself, shortened."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500]
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict):
        return str(error.get("message") or error.get("detail") or error)[:500]
    return str(error)[:500]


def image_data_url(image: Image.Image) -> str:
    """PNG, not JPEG: lossless, so the server sees exactly the pixels we capped (a few MB at most for a page)."""
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # fast; the bytes only cross loopback
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# The model server unit's RuntimeDirectory (rootfs/etc/systemd/system/appliance-vllm.service): `vllm-server` writes
# there what it runs with (settings.json: the card's image pixel cap) and how far its start-up got (progress.json).
RUN_DIR = Path("/run/appliance-vllm")


def read_run_file(name: str, run_dir: Path | None = None) -> dict:
    """settings.json or progress.json from the server's run directory; {} when absent or unreadable."""
    try:
        data = json.loads(((run_dir or RUN_DIR) / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class VllmEngine(HunyuanEngine):
    name = NAME

    def __init__(self, model_dir, url: str | None = None, timeout: float = 600, max_tokens: int = 4096,
                 run_dir: Path | None = None):
        super().__init__(model_dir, device="vllm")
        self.url = (url or DEFAULT_URL).rstrip("/")
        # The pixel cap the server was sized for (its card's memory tier), when that server is the one we talk to.
        served = read_run_file("settings.json", run_dir)
        if served.get("url") == self.url and isinstance(served.get("max_pixels"), int):
            self.max_pixels = min(served["max_pixels"], images.MODEL_MAX_PIXELS)
        self.timeout = timeout
        self.max_tokens = max_tokens
        if not _is_loopback(self.url):
            raise EngineUnavailable(NAME, f"{self.url} is not a loopback address; the model server must run here")
        try:
            models = _get_models(self.url, timeout=5)
        except _SERVER_ERRORS as error:
            raise EngineUnavailable(
                NAME, f"no vLLM server answers at {self.url} ({error}); start it with 'appliance vllm-server'"
            ) from None
        self.served_model = self._pick_served_model(models)
        self.info.device = f"vllm {self.url}"

    def warm_up(self) -> None:
        """One small blank page through the server, so the first person's page does not pay for vLLM's first-request
        setup; a failure here is the first job's to report."""
        try:
            self.generate(Image.new("RGB", (256, 256), "white"), PROMPTS[Task.TEXT], max_tokens=16)
        except EngineUnavailable:
            pass

    def _pick_served_model(self, models: list[dict]) -> str:
        """The served name of OUR model: listed under its model id, or with this directory as its root."""
        our_dir = str(self.model_dir.resolve())
        for entry in models:
            root = entry.get("root") or ""
            if entry.get("id") == self.info.model or (root and os.path.realpath(root) == our_dir):
                return entry["id"]
        served = ", ".join(str(entry.get("id")) for entry in models) or "nothing"
        raise EngineUnavailable(NAME, f"the server at {self.url} serves {served}, not {self.info.model} ({our_dir})")

    def request_body(self, image: Image.Image, prompt: str, max_tokens: int | None = None) -> dict:
        return {
            "model": self.served_model,
            "messages": [
                {"role": "system", "content": ""},
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": image_data_url(image)}},
                        {"type": "text", "text": prompt},
                    ],
                },
            ],
            "temperature": 0,
            "top_k": 1,  # vLLM's extra sampling parameter: greedy even if the server has other defaults
            "repetition_penalty": self.repetition_penalty,
            "max_tokens": max_tokens or self.max_tokens,
            "stream": True,
        }

    def generate(self, image: Image.Image, prompt: str, max_tokens: int | None = None) -> str:
        body = json.dumps(self.request_body(image, prompt, max_tokens)).encode("utf-8")
        parts = urllib.parse.urlsplit(self.url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=self.timeout)
        try:
            connection.request(
                "POST",
                f"{parts.path}/chat/completions",
                body=body,
                headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
            )
            response = connection.getresponse()
            if response.status != 200:
                message = _server_message(response.read())
                raise EngineUnavailable(NAME, f"the server answered HTTP {response.status}: {message}")
            return self._read_stream(response)
        except (OSError, http.client.HTTPException) as error:  # refused, reset, timeout (socket.timeout is OSError)
            raise EngineLost(NAME, f"lost the vLLM server at {self.url}: {error or type(error).__name__}") from None
        except ValueError as error:  # a stream chunk that is not JSON
            raise EngineUnavailable(NAME, f"unreadable answer from {self.url}: {error}") from None
        finally:
            # Closing mid-stream is how a looping answer is stopped: vLLM aborts the request on disconnect.
            connection.close()

    def _read_stream(self, response) -> str:
        """Concatenate the streamed deltas until [DONE], or until the tail loops (then stop reading)."""
        pieces: list[str] = []
        length = checked_at = 0
        self.last_stopped_looping = False
        for line in response:
            line = line.strip()
            if not line.startswith(b"data:"):
                continue  # blank separators, ": keep-alive" comments, event names
            payload = line[len(b"data:") :].strip()
            if payload == b"[DONE]":
                return "".join(pieces)
            chunk = json.loads(payload)
            if "error" in chunk:
                raise EngineUnavailable(NAME, f"the server failed mid-answer: {_server_message(payload)}")
            for choice in chunk.get("choices") or []:
                delta = (choice.get("delta") or {}).get("content") or ""
                pieces.append(delta)
                length += len(delta)
            if length - checked_at >= CHECK_EVERY_CHARS:
                checked_at = length
                if parse.is_looping("".join(pieces)[-8192:]):
                    self.last_stopped_looping = True
                    return "".join(pieces)
        # The connection closed without vLLM's closing [DONE]: the server died mid-answer; half an answer is no answer.
        raise EngineLost(NAME, f"the vLLM server at {self.url} closed the answer stream before its end")


# ---------------------------------------------------------------------------------------------------------------
# Starting the server (GPU machines; vLLM is CUDA only)

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_WORKER_MULTIPROC_METHOD": "spawn",  # fork after CUDA init breaks on Python 3.12
}


def _vllm_executable() -> str:
    """The `vllm` next to this Python (a venv's bin) first, then PATH."""
    beside = Path(sys.executable).with_name("vllm")
    if beside.is_file():
        return str(beside)
    return shutil.which("vllm") or "vllm"


def _vllm_launcher() -> list[str]:
    """How to run vLLM's CLI: its console script, or (the image installs wheels without scripts) its module."""
    executable = _vllm_executable()
    if Path(executable).is_file() or shutil.which(executable):
        return [executable]
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return [sys.executable, "-m", "vllm.entrypoints.cli.main"]
    return [executable]


VLLM_UNIT = "appliance-vllm.service"  # the image's model server (rootfs/etc/systemd/system)
SERVER_START_TIMEOUT = 1200  # seconds the web app waits for a starting model server before it serves on the CPU


def unit_state(unit: str = VLLM_UNIT) -> str:
    """systemd's word for the unit (active, activating, failed, inactive, ...); 'unknown' without systemd."""
    try:
        out = subprocess.run(["systemctl", "is-active", unit], capture_output=True, text=True, timeout=10,
                             check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def wait_for_server(url: str = DEFAULT_URL, progress=None, timeout: float = SERVER_START_TIMEOUT,
                    state=unit_state, poll: float = 2.0, run_dir: Path | None = None) -> bool:
    """On the image: wait while the model server's unit is starting (or restarting after a crash) until the server
    answers, passing on how far its start-up got. False when the unit is not running (skipped: no usable GPU;
    failed) or the time is up."""
    started = time.monotonic()
    while not server_ready(url):
        now = state()
        if now not in ("active", "activating", "reloading") or time.monotonic() - started > timeout:
            return False
        phase = read_run_file("progress.json", run_dir) if progress else {}
        step = phase.get("step") if phase.get("step") in steps.STEPS else "vllm_waiting"
        percent = phase["percent"] if isinstance(phase.get("percent"), int) else None
        steps.report(progress, step, f"{time.monotonic() - started:.0f} s", percent)
        time.sleep(poll)
    return True


# vLLM's start-up as its log shows it (vLLM 0.18; a line that changes wording only loses its splash step):
# (pattern, step in appliance.ocr.steps, percent of the way to ready; a pair scales the line's own percentage).
START_PHASES = (
    (re.compile(r"Initializing a V1 LLM engine"), "vllm_engine", 5),
    (re.compile(r"Starting to load model"), "vllm_weights", 10),
    (re.compile(r"Loading safetensors checkpoint shards:\s*(\d+)%"), "vllm_weights", (10, 60)),
    (re.compile(r"Model loading took"), "vllm_memory", 65),
    (re.compile(r"GPU KV cache size"), "vllm_cache", 80),
    (re.compile(r"init engine \(.*\) took"), "vllm_api", 90),
    (re.compile(r"Starting vLLM server on"), "vllm_api", 95),
)


def start_phase(line: str) -> tuple[str, int] | None:
    """(step, percent) when this line of vLLM's output marks a step of its start-up."""
    for pattern, step, percent in START_PHASES:
        match = pattern.search(line)
        if match:
            if isinstance(percent, tuple):
                low, high = percent
                percent = low + (high - low) * min(100, int(match.group(1))) // 100
            return step, percent
    return None


def _output_lines(stream):
    """Lines of a byte stream, where tqdm's carriage-return redraws count as lines too."""
    pending = b""
    while chunk := stream.read1(65536):
        pending += chunk
        *lines, pending = re.split(rb"\r\n|\r|\n", pending)
        yield from (line.decode("utf-8", errors="replace") for line in lines)
    if pending:
        yield pending.decode("utf-8", errors="replace")


def _follow(stream, log, run_dir: Path | None) -> None:
    """Pass the server's output on (the journal keeps it) and keep progress.json at its latest start-up step."""
    last = None
    for line in _output_lines(stream):
        if not line.strip():
            continue
        log.write(line + "\n")
        log.flush()
        phase = start_phase(line) if run_dir else None
        if phase and phase != last:
            last = phase
            write_atomic(run_dir / "progress.json", json.dumps({"step": phase[0], "percent": phase[1]}).encode())


def server_command(
    model_dir,
    port: int,
    gpu_memory_utilization: float = 0.8,
    max_model_len: int = DEFAULT_MAX_MODEL_LEN,
    extra=(),
    eager: bool = True,
) -> list[str]:
    """The `vllm serve` command line (hunyuanocr.md, "Running it"), bound to loopback, under our model id."""
    model_id, _ = model_info(model_dir)
    return [
        *_vllm_launcher(),
        "serve",
        str(Path(model_dir).resolve()),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        model_id,
        # The official recipe: the prefix and multimodal caches only help repeated prompts + images; we never repeat.
        "--no-enable-prefix-caching",
        "--mm-processor-cache-gb",
        "0",
        "--gpu-memory-utilization",
        str(gpu_memory_utilization),
        "--max-model-len",
        str(max_model_len),
        # Eager (no torch.compile, no CUDA graphs): no minutes of compiling at each boot, less memory, at some
        # throughput cost; compiled only from a compile cache made for this card's architecture (start_server).
        *(["--enforce-eager"] if eager else []),
        *extra,
    ]


def start_server(
    model_dir,
    port: int = 8001,
    gpu_memory_utilization: float = 0.8,
    max_model_len: int = DEFAULT_MAX_MODEL_LEN,
    max_pixels: int | None = None,
    extra=(),
    timeout: float = 900,
    log=None,
    run_dir: Path | None = None,
    compile_cache: Path | None = None,
) -> subprocess.Popen:
    """Start `vllm serve` offline and wait until it answers; EngineUnavailable (and no process left) otherwise.

    `log`: a text file for the server's output (default: our stdout). `run_dir`: where to write settings.json (what
    clients must know: the pixel cap) and progress.json (the start-up step, for the kiosk's splash).
    `compile_cache`: a vLLM cache made for this card's architecture (appliance.gpu.compile_cache_for): the server
    runs compiled from a writable copy of it; None: eager.
    """
    model_dir = check_model_dir(model_dir, NAME)
    env = {**os.environ, **OFFLINE_ENV}
    if compile_cache:
        cache_root = Path(env.get("VLLM_CACHE_ROOT") or Path(env.get("XDG_CACHE_HOME") or "~/.cache") / "vllm")
        cache_root = cache_root.expanduser()
        shutil.copytree(compile_cache, cache_root, dirs_exist_ok=True)  # vLLM writes beside what it reads
        env["VLLM_CACHE_ROOT"] = str(cache_root)
    command = server_command(model_dir, port, gpu_memory_utilization, max_model_len, extra, eager=not compile_cache)
    if command[0] != sys.executable and not Path(command[0]).is_file() and shutil.which(command[0]) is None:
        raise EngineUnavailable(NAME, "vLLM is not installed (it needs an NVIDIA GPU; pip install '.[gpu]')")
    url = f"http://127.0.0.1:{port}/v1"
    if server_ready(url):
        raise EngineUnavailable(NAME, f"something already answers at {url}; stop it or choose another --port")
    if run_dir:
        (run_dir / "progress.json").unlink(missing_ok=True)
        settings = {"url": url, "gpu_memory_utilization": gpu_memory_utilization, "max_model_len": max_model_len,
                    "max_pixels": max_pixels or images.MODEL_MAX_PIXELS, "compiled": bool(compile_cache)}
        write_atomic(run_dir / "settings.json", json.dumps(settings).encode())
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    threading.Thread(target=_follow, args=(process.stdout, log or sys.stdout, run_dir), daemon=True).start()
    deadline = time.monotonic() + timeout
    while not server_ready(url):
        if process.poll() is not None:
            raise EngineUnavailable(NAME, f"vllm serve exited with status {process.returncode} before it was ready")
        if time.monotonic() > deadline:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            raise EngineUnavailable(NAME, f"vllm serve did not answer at {url} within {timeout:.0f} s")
        time.sleep(1.0)
    return process
