"""vLLM server benchmark: the real vLLM 0.18.1 (CPU build, .venv-vllm) serving the tiny real-layout checkpoint through
`appliance vllm-server`, beside the in-process transformers engine on the same checkpoint, in the same run.

    python3 -m bench.vllm_server                 # `make bench` (needs `make vllm-venv`)
    python3 -m bench.vllm_server --tokens 256 --runs 3

Figures per engine: start to ready (vLLM: from launching `appliance vllm-server` to its API answering; transformers:
loading the model in-process), time to first token, and decode tokens/s after the first token, for the same page
image and prompt (the text task), greedy, with the answer held at --tokens tokens (min_tokens / min_new_tokens, so
an end-of-answer token does not cut one run short). The model is tiny and random: the figures measure the serving
stacks' own costs (process start, request handling, per-token overhead), not HunyuanOCR's speed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from PIL import Image, ImageDraw

from appliance.ocr import images
from appliance.ocr.engines.openai_client import server_ready
from appliance.ocr.tasks import Request
from appliance.servers import vllm

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv-vllm"


def page() -> Image.Image:
    image = Image.new("RGB", (900, 640), "white")
    draw = ImageDraw.Draw(image)
    for row in range(8):
        draw.text((40, 40 + 70 * row), f"Invoice 2026 Total 42.50 line {row}", fill="black")
    return images.cap_pixels(image)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_vllm(model_dir: Path, log) -> tuple[subprocess.Popen, str, float]:
    """`appliance vllm-server` as the image runs it (the venv's bin on PATH); (process, url, seconds to ready)."""
    port = free_port()
    env = {**os.environ, "PATH": f"{VENV / 'bin'}:{os.environ['PATH']}"}
    command = [sys.executable, "-m", "appliance", "vllm-server", "--model", str(model_dir), "--port", str(port)]
    started = time.monotonic()
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    while not server_ready(url):
        if server.poll() is not None or time.monotonic() - started > 600:
            raise SystemExit(f"vllm-server did not start (status {server.poll()}); its output: {log.name}")
        time.sleep(0.2)
    return server, url, time.monotonic() - started


def vllm_run(client, image: Image.Image, prompt: str, tokens: int) -> tuple[float, float]:
    """One streamed request, the client's own body; (seconds to the first token, decode tokens/s after it)."""
    body = client.request_body(image, prompt, tokens) | {"min_tokens": tokens}
    parts = urllib.parse.urlsplit(client.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    started = time.monotonic()
    connection.request(
        "POST", f"{parts.path}/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    first = usage = None
    for line in response:
        payload = line.strip().removeprefix(b"data:").strip()
        if not payload or payload == b"[DONE]":
            continue
        chunk = json.loads(payload)
        if first is None and any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
            first = time.monotonic()
        usage = chunk.get("usage") or usage
    end = time.monotonic()
    connection.close()
    return first - started, (usage["completion_tokens"] - 1) / (end - first)


def transformers_run(engine, image: Image.Image, prompt: str, tokens: int) -> tuple[float, float]:
    """The engine's own chat text and processor, generate() timed to the first token by a streamer."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.monotonic())

        def end(self):
            pass

    inputs = engine.processor(text=[engine.chat_text(image, prompt)], images=[image], return_tensors="pt")
    clock = Clock()
    started = time.monotonic()
    with torch.inference_mode():
        output = engine.model.generate(
            **inputs.to(engine.device),
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            repetition_penalty=engine.repetition_penalty,
            streamer=clock,
            pad_token_id=engine.processor.tokenizer.pad_token_id,
        )
    end = time.monotonic()
    new = output.shape[1] - inputs["input_ids"].shape[1]
    first = clock.times[1]  # put() #0 is the prompt, #1 the first new token
    return first - started, (new - 1) / (end - first)


def summary(name: str, ready: float, runs: list[tuple[float, float]], note: str) -> str:
    ttft = statistics.median(r[0] for r in runs)
    rate = statistics.median(r[1] for r in runs)
    return f"{name:<24} ready {ready:6.1f} s   first token {ttft * 1000:7.0f} ms   decode {rate:7.1f} tok/s   {note}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.vllm_server", description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128, help="answer length in tokens (default 128)")
    parser.add_argument("--runs", type=int, default=3, help="timed requests per engine, after one warm-up")
    args = parser.parse_args(argv)
    if not (VENV / "bin" / "vllm").is_file():
        raise SystemExit(f"no vLLM in {VENV}: run `make vllm-venv` first")
    sys.path.insert(0, str(REPO / "tests"))
    from hunyuan_checkpoint import build_checkpoint

    image, prompt = page(), Request.make("text").prompt()
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp:
        model_dir = build_checkpoint(Path(tmp) / "checkpoint")
        log_path = Path(tmp) / "vllm-server.log"
        with open(log_path, "w") as log:
            server, url, vllm_ready = start_vllm(model_dir, log)
            try:
                client = vllm.open_client(model_dir, url=url)
                vllm_run(client, image, prompt, args.tokens)  # warm-up: the first request's one-off costs
                vllm_runs = [vllm_run(client, image, prompt, args.tokens) for _ in range(args.runs)]
            finally:
                server.send_signal(signal.SIGTERM)  # vllm-server then stops vLLM's whole process group
                server.wait(60)
        kv = next((line for line in log_path.read_text().splitlines() if "KV cache size" in line), "")

        from appliance.ocr.engines.transformers import TransformersEngine

        started = time.monotonic()
        engine = TransformersEngine(model_dir, device="cpu")
        transformers_ready = time.monotonic() - started
        transformers_run(engine, image, prompt, args.tokens)
        transformers_runs = [transformers_run(engine, image, prompt, args.tokens) for _ in range(args.runs)]
        engine.close()

    print(f"tiny real-layout checkpoint, {image.width}x{image.height} page, text task, {args.tokens} tokens, "
          f"median of {args.runs} after a warm-up, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(summary("vLLM 0.18.1 (CPU build)", vllm_ready, vllm_runs, "appliance vllm-server, streamed"))
    print(summary("transformers in-process", transformers_ready, transformers_runs, f"{engine.dtype}"))
    if kv:
        print(f"vLLM: {kv.split('] ', 1)[-1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
