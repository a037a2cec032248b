"""HunyuanOCR through a model server on loopback that speaks the OpenAI chat-completions protocol (vLLM today).

One client for every such server: what differs between servers (engine name, how to start one, the sampling fields
it takes) is a `ModelServer` description, given by the server's own module (appliance.servers.vllm.SERVER).

The client uses only the standard library, so the appliance needs no extra package to talk to the server. Requests
are the official client's: empty system message, the image as a base64 data URL, the fixed prompt, greedy. Answers
are streamed, and the stream is closed as soon as parse.is_looping says the tail is an endless repetition: the
server aborts a request whose client disconnects, so a looping page costs seconds instead of the whole token budget.

The servers listen on loopback only and are never reached beyond it.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from PIL import Image

from appliance.ocr import images, parse
from appliance.ocr.engines.base import OnText
from appliance.ocr.engines.hunyuan import HunyuanEngine, Throttled
from appliance.ocr.errors import EngineLost, EngineUnavailable
from appliance.ocr.tasks import PROMPTS, Task

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
CHECK_EVERY_CHARS = 64  # how much new answer text between two looping checks while streaming


@dataclass(frozen=True)
class ModelServer:
    """What the client must know about one kind of OpenAI-protocol model server."""

    engine: str  # the engine's name (appliance.ocr.engines.base.ENGINE_NAMES): "hunyuan-vllm"
    device: str  # what the result's engine.device says, before the URL: "vllm"
    title: str  # the server in messages: "vLLM"
    default_url: str  # its base URL on loopback, ending in /v1
    start_hint: str  # how a person starts one: "start it with 'appliance vllm-server'"
    # Request fields beyond the OpenAI standard that keep decoding greedy on this server, e.g. vLLM's {"top_k": 1}.
    greedy: dict = field(default_factory=dict)
    penalty_field: str = "repetition_penalty"  # the name this server gives the repetition penalty
    gguf: bool = False  # it serves the model's GGUF files (appliance.model_dir.find_gguf), not the checkpoint


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


def _healthy(url: str, timeout: float) -> bool:
    """False when the server's GET /health (beside /v1: vLLM, llama-server) answers 5xx: vLLM whose engine process
    died still lists its models for the few seconds before it shuts down, but answers 503 here. A server without
    /health (404) counts as healthy."""
    try:
        with _opener.open(f"{url.rstrip('/').removesuffix('/v1')}/health", timeout=timeout):
            return True
    except urllib.error.HTTPError as error:
        return error.code < 500


def server_ready(url: str, timeout: float = 1.0) -> bool:
    """True when an OpenAI-compatible server on loopback answers GET {url}/models with a model and is healthy.
    Never raises."""
    if not _is_loopback(url):
        return False
    try:
        return bool(_get_models(url, timeout)) and _healthy(url, timeout)
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


class OpenAIEngine(HunyuanEngine):
    """The Engine for HunyuanOCR behind one model server: `server` says which kind, `url` where it listens.
    `max_pixels`: the image pixel cap that server was sized for (its card's memory tier); None: the model's own."""

    def __init__(
        self,
        model_dir,
        server: ModelServer,
        url: str | None = None,
        max_pixels: int | None = None,
        timeout: float = 600,
        max_tokens: int = 4096,
    ):
        self.name = server.engine  # before the directory check, whose errors name the engine
        super().__init__(model_dir, device=server.device, gguf=server.gguf)
        self.server = server
        self.url = (url or server.default_url).rstrip("/")
        if max_pixels is not None:
            self.max_pixels = min(max_pixels, images.MODEL_MAX_PIXELS)
        self.timeout = timeout
        self.max_tokens = max_tokens
        self.last_usage: dict | None = None  # the last answer's token counts (the server's "usage")
        self.last_timings: dict | None = None  # llama-server's timings of the last answer (prompt_ms, ...)
        if not _is_loopback(self.url):
            raise EngineUnavailable(
                self.name, f"{self.url} is not a loopback address; the model server must run here"
            )
        try:
            models = _get_models(self.url, timeout=5)
        except _SERVER_ERRORS as error:
            raise EngineUnavailable(
                self.name, f"no {server.title} server answers at {self.url} ({error}); {server.start_hint}"
            ) from None
        self.served_model = self._pick_served_model(models)
        self.info.device = f"{self.info.device} {self.url}"

    def warm_up(self) -> None:
        """One small blank page through the server, so the first person's page does not pay for the server's
        first-request setup; a failure here is the first job's to report."""
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
        raise EngineUnavailable(
            self.name, f"the server at {self.url} serves {served}, not {self.info.model} ({our_dir})"
        )

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
            **self.server.greedy,  # greedy even if the server has other defaults
            self.server.penalty_field: self.repetition_penalty,
            "max_tokens": max_tokens or self.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},  # the token counts, in a last chunk (last_usage)
        }

    def generate(
        self, image: Image.Image, prompt: str, max_tokens: int | None = None, on_text: OnText | None = None
    ) -> str:
        body = json.dumps(self.request_body(image, prompt, max_tokens)).encode("utf-8")
        parts = urllib.parse.urlsplit(self.url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=self.timeout)
        title = self.server.title
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
                # 5xx: the server failed, not the request (vLLM answers 500 once its engine process is dead, for
                # the seconds before it shuts down): lost, so the queue waits for it and runs the job again.
                failed = EngineLost if response.status >= 500 else EngineUnavailable
                raise failed(self.name, f"the server answered HTTP {response.status}: {message}")
            return self._read_stream(response, Throttled(on_text))
        except (OSError, http.client.HTTPException) as error:  # refused, reset, timeout (socket.timeout is OSError)
            why = error or type(error).__name__
            raise EngineLost(self.name, f"lost the {title} server at {self.url}: {why}") from None
        except ValueError as error:  # a stream chunk that is not JSON
            raise EngineUnavailable(self.name, f"unreadable answer from {self.url}: {error}") from None
        finally:
            # Closing mid-stream is how a looping answer is stopped: the server aborts the request on disconnect.
            connection.close()

    def _read_stream(self, response, report: Throttled) -> str:
        """Concatenate the streamed deltas until [DONE], or until the tail loops (then stop reading); `report` the
        text so far as it grows (one content chunk is one token on vLLM and llama-server)."""
        pieces: list[str] = []
        length = checked_at = tokens = 0
        self.last_stopped_looping = False
        self.last_usage = self.last_timings = None
        for line in response:
            line = line.strip()
            if not line.startswith(b"data:"):
                continue  # blank separators, ": keep-alive" comments, event names
            payload = line[len(b"data:") :].strip()
            if payload == b"[DONE]":
                return "".join(pieces)
            chunk = json.loads(payload)
            if "error" in chunk:
                # vLLM's engine process died (or failed) mid-answer: it sends this event, then a normal [DONE] on
                # HTTP 200, and then the server shuts down. Lost, so the job is queued again; never an answer.
                raise EngineLost(self.name, f"the server failed mid-answer: {_server_message(payload)}")
            # What the answer cost, for tests and benchmarks: token counts; llama-server adds its own timings.
            self.last_usage = chunk.get("usage") or self.last_usage
            self.last_timings = chunk.get("timings") or self.last_timings
            for choice in chunk.get("choices") or []:
                delta = (choice.get("delta") or {}).get("content") or ""
                pieces.append(delta)
                length += len(delta)
                tokens += bool(delta)
            report(lambda: "".join(pieces), tokens)
            if length - checked_at >= CHECK_EVERY_CHARS:
                checked_at = length
                if parse.is_looping("".join(pieces)[-8192:]):
                    self.last_stopped_looping = True
                    return "".join(pieces)
        # The connection closed without the closing [DONE]: the server died mid-answer; half an answer is no answer.
        raise EngineLost(
            self.name, f"the {self.server.title} server at {self.url} closed the answer stream before its end"
        )
