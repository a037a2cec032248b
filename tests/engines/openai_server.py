"""A small OpenAI-compatible chat-completions server for tests, standing in for `vllm serve`.

Backed by a real engine's `generate(image, prompt)` (the tiny model through TransformersEngine), so the vLLM client
can be checked end to end: same image + prompt -> same answer. It records every request it receives, and in
`loop_unit` mode streams the real answer followed by an endless repetition, to check that the client hangs up.

Standard library only (http.server in a thread), on 127.0.0.1 and a free port.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

# In loop mode the server streams until the client hangs up, or gives up after this long, so a client that never
# hangs up fails the test instead of hanging it. Endless (not a fixed count) because socket buffers would swallow
# any modest count before the client has read enough to decide.
LOOP_SECONDS = 20.0


def decode_data_url(url: str) -> Image.Image:
    header, _, payload = url.partition(",")
    if not header.startswith("data:image/") or not header.endswith(";base64"):
        raise ValueError(f"not a base64 image data URL: {header[:40]}")
    return Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))


class FakeOpenAIServer:
    """`with FakeOpenAIServer(generate, model_id, root) as server:` ... `server.url` is the base URL (…/v1)."""

    def __init__(self, generate, model_id: str, root: str = ""):
        self.generate = generate
        self.model_id = model_id
        self.root = root
        self.requests: list[dict] = []  # every chat-completions body received, as parsed JSON
        self.loop_unit: str | None = None  # when set, streaming appends this unit forever (until the client leaves)
        self.loop_chunks_sent = 0
        self.client_hung_up = threading.Event()
        self.fail_with: tuple[int, str] | None = None  # (status, message) to answer every chat request with
        self.crash_next = 0  # this many chat requests get a few characters, then the connection drops (a crash)
        self.chunk_delay = 0.0  # seconds between two streamed chunks: a slow model, for the live text
        self._lock = threading.Lock()  # one generate() at a time: the model is not thread-safe
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()

    def answer(self, body: dict) -> str:
        """Run the backing engine on the request's image and text, as vLLM would run the model."""
        user = next(m for m in body["messages"] if m["role"] == "user")
        image = prompt = None
        for item in user["content"]:
            if item["type"] == "image_url":
                image = decode_data_url(item["image_url"]["url"])
            elif item["type"] == "text":
                prompt = item["text"]
        with self._lock:
            return self.generate(image.convert("RGB"), prompt)

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _json(self, status: int, data: dict) -> None:
                body = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path.rstrip("/") != "/v1/models":
                    return self._json(404, {"error": {"message": f"no route {self.path}"}})
                entry = {"id": server.model_id, "object": "model", "owned_by": "test", "root": server.root}
                self._json(200, {"object": "list", "data": [entry]})

            def do_POST(self):
                if self.path != "/v1/chat/completions":
                    return self._json(404, {"error": {"message": f"no route {self.path}"}})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                if server.fail_with:
                    status, message = server.fail_with
                    return self._json(status, {"error": {"message": message, "type": "BadRequestError"}})
                text = server.answer(body)
                if not body.get("stream"):
                    return self._json(
                        200,
                        {
                            "object": "chat.completion",
                            "model": body.get("model"),
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": text},
                                    "finish_reason": "stop",
                                }
                            ],
                        },
                    )
                self._stream(body, text)

            def _stream(self, body: dict, text: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()

                def send(delta: dict, finish=None) -> None:
                    chunk = {
                        "object": "chat.completion.chunk",
                        "model": body.get("model"),
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                    }
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()

                try:
                    send({"role": "assistant", "content": ""})
                    if server.crash_next:  # a server process dying mid-answer: the stream just ends
                        server.crash_next -= 1
                        send({"content": text[:3]})
                        self.close_connection = True
                        return
                    for start in range(0, len(text), 3):  # a few characters per chunk, like tokens
                        send({"content": text[start : start + 3]})
                        time.sleep(server.chunk_delay)
                    if server.loop_unit:
                        deadline = time.monotonic() + LOOP_SECONDS
                        while time.monotonic() < deadline:
                            send({"content": server.loop_unit})
                            server.loop_chunks_sent += 1
                    send({}, finish="stop")
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    server.client_hung_up.set()  # what vLLM turns into an aborted request
                self.close_connection = True

        return Handler
