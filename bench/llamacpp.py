"""HunyuanOCR on the CPU: llama.cpp's llama-server against the in-process transformers engine, in one run.

    python3 -m bench.llamacpp                      # `make bench` (needs `make llama-cpp`)
    python3 -m bench.llamacpp --caps 0.5,0.75 --long-tokens 0 --no-transformers

A checkpoint with HunyuanOCR's REAL dimensions and random weights (tests/hunyuan_checkpoint.py, size "real"; built
once into bench/data/cache) costs what the real model costs per token, so the figures are the real cost; the
answers are noise, so every answer is forced to its full length (llama-server's ignore_eos, transformers'
min_new_tokens). The page is an A4 scan (2480x3508, 300 dpi) capped to each candidate pixel cap as the engines cap.

Per engine: load time (launch to ready), vision encode + prefill of the page (time to the first answer token),
decode tokens/s, the page time for a 100- and a 1000-token answer (encode + prefill + tokens / decode rate; the
1000-token answer is also generated for real at --long-cap), peak RSS, and decode as a share of the memory-bandwidth
bound (weight bytes read per token / this machine's measured read bandwidth on the same threads).
llama.cpp runs text Q8_0 + mmproj f16, the shipped configuration; transformers runs fp32 (its CPU dtype).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data" / "cache"
CHECKPOINT = DATA / "hunyuan-real"
GGUF = DATA / "hunyuan-real-gguf"
A4 = (2480, 3508)  # 300 dpi
PROMPT_TASK = "doc"


def a4_page() -> Image.Image:
    """A text-filled A4 page (what it shows does not change the cost: only its pixel count does)."""
    image = Image.new("RGB", A4, "white")
    draw = ImageDraw.Draw(image)
    for row in range(90):
        draw.text(
            (150, 150 + row * 36), f"{row:02d} Invoice line: item {row * 7} qty {row % 9} price 12.50 EUR", "black"
        )
    return image


def read_bandwidth(threads: int, size_mb: int = 512, repeat: int = 5) -> float:
    """Bytes/s that `threads` threads read from memory (numpy sums release the GIL), best of `repeat`."""
    import numpy as np

    parts = [np.ones(size_mb * 2**20 // 8 // threads) for _ in range(threads)]
    best = 0.0
    for _ in range(repeat):
        workers = [threading.Thread(target=part.sum) for part in parts]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        best = max(best, size_mb * 2**20 / (time.perf_counter() - start))
    return best


def matmul_rate(threads: int, n: int = 2048, repeat: int = 5) -> float:
    """FLOP/s of an fp32 matrix product on `threads` threads (torch's BLAS), best of `repeat`: what this CPU can
    compute, as read_bandwidth is what it can read. llama.cpp's f16 vision tower converts to fp32 and multiplies
    there, so this is its ceiling too."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def page_flops(config: dict, width: int, height: int, prompt_tokens: int) -> float:
    """FLOPs of reading one page: the vision tower's blocks over its 16-pixel patches (linear layers + attention,
    the sides rounded to 32 pixels as the processor does) plus the decoder's prefill of the prompt (linear layers +
    causal attention). The patch merger, norms and activations are left out: a few percent."""
    v = config["vision_config"]
    patches = (2 * round(width / 32)) * (2 * round(height / 32))
    d, inner = v["hidden_size"], v["intermediate_size"]
    vision = v["num_hidden_layers"] * (2 * patches * (4 * d * d + 2 * d * inner) + 4 * patches**2 * d)
    d, inner, tokens = config["hidden_size"], config["intermediate_size"], prompt_tokens
    q = config["num_attention_heads"] * config["head_dim"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    linear = 2 * tokens * (2 * d * q + 2 * d * kv + 3 * d * inner)
    return vision + config["num_hidden_layers"] * (linear + 2 * tokens**2 * q)


def prepare(log) -> None:
    """The real-size random checkpoint and its GGUF files, made once."""
    if not (CHECKPOINT / "config.json").is_file():
        sys.path.insert(0, str(ROOT / "tests"))
        from hunyuan_checkpoint import build_checkpoint

        print("building the real-size random checkpoint (minutes) ...", flush=True)
        build_checkpoint(CHECKPOINT, "real")
    if not list(GGUF.glob("*.gguf")):
        from imagebuilder import gguf

        print("converting it to GGUF (text q8_0, mmproj f16) ...", flush=True)
        gguf.convert(CHECKPOINT, GGUF, "q8_0", cache_dir=ROOT / "cache", log=log)


def decode_bytes_per_token_gguf(path: Path) -> int:
    """Bytes of weights a decode step reads: every tensor but the token embedding (one row of it), unless the model
    has no output.weight: HunyuanOCR ties its output head to the embedding, so llama.cpp multiplies by all of
    token_embd for every token (125 MiB in Q8_0 at the real size)."""
    from imagebuilder import llamacpp_source

    sys.path.insert(0, str(llamacpp_source.source_tree(ROOT / "cache") / "gguf-py"))
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(path).tensors}
    tied = "output.weight" not in tensors
    return sum(size for name, size in tensors.items() if tied or name != "token_embd.weight")


# ---- llama.cpp ----------------------------------------------------------------------------------------------------


def stream(url: str, body: dict) -> dict:
    """POST a streamed chat completion; time to the first content token, the token count, llama-server's timings."""
    import http.client
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=3600)
    start = time.perf_counter()
    first = None
    timings = usage = None
    connection.request(
        "POST", f"{parts.path}/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    assert response.status == 200, response.read()
    for line in response:
        if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
            continue
        chunk = json.loads(line[5:])
        if first is None and any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
            first = time.perf_counter() - start
        timings = chunk.get("timings") or timings
        usage = chunk.get("usage") or usage
    connection.close()
    return {"ttft_s": first, "total_s": time.perf_counter() - start, "timings": timings, "usage": usage}


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def bench_llamacpp(
    caps, threads: int, short_tokens: int, long_tokens: int, long_cap: float, log, gguf_dir: Path = GGUF
) -> dict:
    from appliance.ocr import images
    from appliance.ocr.engines.openai_client import OpenAIEngine
    from appliance.ocr.tasks import Request
    from appliance.servers import llamacpp
    from imagebuilder import llamacpp_source

    host_build = llamacpp_source.host_bin_dir(ROOT / "cache") / "llama-server"  # `make llama-cpp`
    if host_build.is_file():
        os.environ.setdefault(llamacpp.BINARY_ENV, str(host_build))
    port = 8092
    started = time.perf_counter()
    server = llamacpp.start_server(gguf_dir, port, threads=threads, log=log, timeout=1200)
    load_s = time.perf_counter() - started
    url = f"http://127.0.0.1:{port}/v1"
    results = {"load_s": load_s, "pages": []}
    try:
        engine = OpenAIEngine(gguf_dir, llamacpp.SERVER, url)
        prompt = Request.make(PROMPT_TASK).prompt()
        page = a4_page()
        for cap in caps:
            capped = images.cap_pixels(page, int(cap * 1e6))
            tokens = long_tokens if long_tokens and cap == long_cap else short_tokens
            body = {**engine.request_body(capped, prompt, max_tokens=tokens), "ignore_eos": True}
            run = stream(url, body)
            t = run["timings"]
            row = {
                "cap_mp": cap,
                "image": f"{capped.width}x{capped.height}",
                "prompt_tokens": t["prompt_n"],
                "encode_prefill_s": run["ttft_s"],
                "decode_tok_s": t["predicted_per_second"],
                "answer_tokens": t["predicted_n"],
                "answer_s": run["total_s"],
            }
            results["pages"].append(row)
            print(f"  llama.cpp {row}", flush=True)
        results["peak_rss"] = peak_rss(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=60)
    results["bytes_per_token"] = decode_bytes_per_token_gguf(next(gguf_dir.glob("hunyuanocr-*.gguf")))
    return results


# ---- transformers (its own process, so its peak RSS is its own) --------------------------------------------------


class TokenTimes:
    """A generate() streamer that only notes when each token arrives (the first put() is the prompt)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def transformers_worker(caps, threads: int, tokens: int) -> dict:
    """In a child process: load the transformers engine, then per cap generate `tokens` forced tokens, timing the
    first (encode + prefill) and the rest (decode)."""
    import torch

    torch.set_num_threads(threads)
    from appliance.ocr import images
    from appliance.ocr.engines.transformers import TransformersEngine
    from appliance.ocr.tasks import Request

    started = time.perf_counter()
    engine = TransformersEngine(CHECKPOINT, device="cpu")
    load_s = time.perf_counter() - started
    prompt = Request.make(PROMPT_TASK).prompt()
    page = a4_page()
    rows = []
    for cap in caps:
        capped = images.cap_pixels(page, int(cap * 1e6))
        text = engine.chat_text(capped, prompt)
        inputs = engine.processor(text=[text], images=[capped], return_tensors="pt")
        stamps = TokenTimes()
        start = time.perf_counter()
        with torch.inference_mode():
            engine.model.generate(
                **inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, streamer=stamps
            )
        first, last = stamps.times[1] - start, stamps.times[-1] - start  # times[0]: the prompt handed to the streamer
        rows.append(
            {
                "cap_mp": cap,
                "image": f"{capped.width}x{capped.height}",
                "prompt_tokens": int(inputs["input_ids"].shape[1]),
                "encode_prefill_s": first,
                "decode_tok_s": (len(stamps.times) - 2) / (last - first),
            }
        )
        print(f"  transformers {rows[-1]}", file=sys.stderr, flush=True)
    # A decode step reads the decoder's weights (but one row of the input embedding) and the output head.
    decoder = sum(p.numel() * p.element_size() for p in engine.model.get_decoder().parameters())
    embed, head = engine.model.get_input_embeddings().weight, engine.model.get_output_embeddings().weight
    return {
        "load_s": load_s,
        "pages": rows,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "bytes_per_token": decoder - embed.numel() * embed.element_size() + head.numel() * head.element_size(),
    }


def bench_transformers(caps, threads: int, tokens: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(
        [sys.executable, "-m", "bench.llamacpp", "--transformers-worker", "--caps", ",".join(map(str, caps)),
         "--threads", str(threads), "--short-tokens", str(tokens)],
        cwd=ROOT, env=env, check=True, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- report --------------------------------------------------------------------------------------------------------


def report(name: str, result: dict, bandwidth: float, compute: float) -> None:
    """Decode against the bandwidth bound; reading the page (encode + prefill) against the compute bound."""
    bound = bandwidth / result["bytes_per_token"]
    config = json.loads((CHECKPOINT / "config.json").read_text())
    print(f"\n{name}: load {result['load_s']:.1f} s, peak RSS {result['peak_rss'] / 2**30:.2f} GiB, weights read per "
          f"token {result['bytes_per_token'] / 2**20:.0f} MiB -> bandwidth bound {bound:.1f} tok/s")  # fmt: skip
    print(f"  {'cap MP':>6} {'tokens in':>9} {'enc+prefill s':>13} {'TFLOP':>5} {'of compute':>10} "
          f"{'decode tok/s':>12} {'of bound':>8} {'100-tok page s':>14} {'1000-tok page s':>15}")  # fmt: skip
    for row in result["pages"]:
        rate, reading = row["decode_tok_s"], row["encode_prefill_s"]
        page100, page1000 = reading + 100 / rate, reading + 1000 / rate
        width, height = (int(side) for side in row["image"].split("x"))
        flops = page_flops(config, width, height, row["prompt_tokens"])
        measured = f" (measured {row['answer_s']:.0f})" if row.get("answer_tokens", 0) >= 1000 else ""
        print(f"  {row['cap_mp']:>6} {row['prompt_tokens']:>9} {reading:>13.1f} {flops / 1e12:>5.2f} "
              f"{flops / reading / compute:>10.0%} {rate:>12.1f} {rate / bound:>8.0%} {page100:>14.0f} "
              f"{page1000:>15.0f}{measured}")  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caps", default="0.5,0.75,1.0", help="pixel caps to measure, in megapixels")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--short-tokens", type=int, default=32, help="forced answer tokens per page (decode rate)")
    parser.add_argument(
        "--long-tokens", type=int, default=1000, help="a real answer this long at --long-cap (0: none)"
    )
    parser.add_argument("--long-cap", type=float, default=0.75)
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument(
        "--gguf", type=Path, default=GGUF, help="llama.cpp's GGUF pair to measure (default: text q8_0 + mmproj f16)"
    )
    parser.add_argument("--transformers-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    caps = [float(c) for c in args.caps.split(",")]
    if args.transformers_worker:
        print(json.dumps(transformers_worker(caps, args.threads, args.short_tokens)))
        return 0
    DATA.mkdir(parents=True, exist_ok=True)
    with open(DATA / "llamacpp-bench.log", "a") as log:
        prepare(log)
        bandwidth = read_bandwidth(args.threads)
        compute = matmul_rate(args.threads)
        print(f"memory read bandwidth, {args.threads} threads: {bandwidth / 1e9:.1f} GB/s; fp32 matrix product: "
              f"{compute / 1e9:.0f} GFLOP/s", flush=True)  # fmt: skip
        results = {"threads": args.threads, "bandwidth": bandwidth, "compute": compute}
        results["llama.cpp"] = bench_llamacpp(
            caps, args.threads, args.short_tokens, args.long_tokens, args.long_cap, log, args.gguf
        )
        if not args.no_transformers:
            results["transformers"] = bench_transformers(caps, args.threads, args.short_tokens)
    (DATA / "llamacpp-bench.json").write_text(json.dumps(results, indent=1))
    for name in ("llama.cpp", "transformers"):
        if name in results:
            report(name, results[name], bandwidth, compute)
    return 0


if __name__ == "__main__":
    sys.exit(main())
