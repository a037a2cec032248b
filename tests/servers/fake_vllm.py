"""Stands in for vLLM's CLI (`vllm serve DIR --port N ...`), which needs CUDA: prints the start-up lines vLLM 0.18
prints (tqdm's carriage-return redraws included), then answers GET /v1/models on 127.0.0.1:N until killed.
Tests only: it checks how `start_server` follows a server's start-up, not any OCR."""

import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

START_UP = [
    "INFO 11-22 10:00:01 [core.py:103] Initializing a V1 LLM engine (v0.18.1) with config: model='/m'\n",
    "INFO 11-22 10:00:03 [gpu_model_runner.py:4481] Starting to load model /m...\n",
    "Loading safetensors checkpoint shards:   0% Completed | 0/2 [00:00<?, ?it/s]\r",
    "Loading safetensors checkpoint shards:  50% Completed | 1/2 [00:01<00:01,  1.0s/it]\r",
    "Loading safetensors checkpoint shards: 100% Completed | 2/2 [00:02<00:00,  1.0s/it]\n",
    "INFO 11-22 10:00:06 [gpu_model_runner.py:4566] Model loading took 2.1 GiB memory and 3.2 seconds\n",
    "INFO 11-22 10:00:09 [kv_cache_utils.py:1316] GPU KV cache size: 500,000 tokens\n",
    "INFO 11-22 10:00:12 [core.py:281] init engine (profile, create kv cache, warmup model) took 6.01 seconds\n",
    "INFO 11-22 10:00:13 [api_server.py:580] Starting vLLM server on http://127.0.0.1:{port}\n",
]


class Models(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": "fake", "root": "/m"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[sys.argv.index("--port") + 1])
    # How it was started, for the test to check (vLLM itself logs its arguments too).
    print("FAKE-VLLM " + json.dumps({"args": sys.argv[1:], "cache_root": os.environ.get("VLLM_CACHE_ROOT")}))
    for line in START_UP:
        sys.stdout.write(line.format(port=port))
        sys.stdout.flush()
        time.sleep(0.05)
    HTTPServer(("127.0.0.1", port), Models).serve_forever()
