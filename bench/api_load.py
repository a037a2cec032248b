"""The HTTP API under load: POST /ocr throughput and latency with many clients, and how quickly GET /health answers
meanwhile, against the same server idle (the baseline, measured in the same run).

    python3 -m bench.api_load                  # 30 clients for 60 s, the real CPU engine on small text images
    python3 -m bench.api_load --clients 16 --seconds 30

The real server (waitress, 16 threads) and app on loopback in this process, the real CPU engine (rapidocr). Each
client posts a different small image each time (no cache hits). Requests beyond the app's synchronous slots are
answered 503 + Retry-After at once; they are counted apart (a client would retry or use POST /jobs).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import tempfile
import threading
import time
from pathlib import Path

import requests
from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def picture(n: int) -> bytes:
    import io

    image = Image.new("RGB", (520, 90), "white")
    ImageDraw.Draw(image).text(
        (16, 20), f"Order {n:05d} total {n % 97}.50", fill="black", font=ImageFont.truetype(FONT, 36)
    )
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def health_latencies(url: str, seconds: float, stop: threading.Event | None = None) -> list[float]:
    times, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline and not (stop and stop.is_set()):
        started = time.monotonic()
        requests.get(f"{url}/health", timeout=30)
        times.append(time.monotonic() - started)
        time.sleep(0.2)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args(argv)

    from webui import close_app, create_app
    from webui.server import make_server
    from webui.server import stop as stop_server

    data = Path(tempfile.mkdtemp(prefix="bench-api-"))
    app = create_app({"DATA_DIR": str(data), "ENGINE": "cpu"})
    server = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.effective_port}"
    try:
        assert app.extensions["backend"].jobs.wait_engine(300)["ready"]
        requests.post(f"{url}/ocr", files={"file": ("warm.png", picture(0))}, timeout=120)  # warm the engine
        idle = health_latencies(url, 5)

        counter, lock = [0], threading.Lock()
        ok, busy, failed, latencies = [0], [0], [0], []
        deadline = time.monotonic() + args.seconds

        def client():
            while time.monotonic() < deadline:
                with lock:
                    counter[0] += 1
                    n = counter[0]
                started = time.monotonic()
                response = requests.post(f"{url}/ocr", files={"file": (f"p{n}.png", picture(n))}, timeout=700)
                with lock:
                    if response.status_code == 200:
                        ok[0] += 1
                        latencies.append(time.monotonic() - started)
                    elif response.status_code == 503:
                        busy[0] += 1
                        time.sleep(min(float(response.headers.get("Retry-After", 1)), 2))
                    else:
                        failed[0] += 1

        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(args.clients + 1) as pool:
            clients = [pool.submit(client) for _ in range(args.clients)]
            loaded = pool.submit(health_latencies, url, args.seconds)
            for future in clients:
                future.result()
            loaded_health = loaded.result()
        elapsed = time.monotonic() - started
    finally:
        stop_server(server)
        thread.join(10)
        close_app(app)

    print(f"{args.clients} clients, {elapsed:.0f} s, CPU engine, small text images (no cache hits)")
    print(
        f"POST /ocr: {ok[0] / elapsed:.2f} results/s; latency p50 {percentile(latencies, 0.5):.2f} s, "
        f"p95 {percentile(latencies, 0.95):.2f} s; {busy[0]} answered 503 busy (retried), {failed[0]} other errors"
    )
    print(
        f"GET /health idle:   p50 {percentile(idle, 0.5) * 1000:.0f} ms, p95 {percentile(idle, 0.95) * 1000:.0f} ms"
    )
    print(
        f"GET /health loaded: p50 {percentile(loaded_health, 0.5) * 1000:.0f} ms, "
        f"p95 {percentile(loaded_health, 0.95) * 1000:.0f} ms, max {max(loaded_health) * 1000:.0f} ms "
        f"(x{statistics.median(loaded_health) / max(statistics.median(idle), 1e-6):.1f} the idle median)"
    )
    return 1 if failed[0] else 0


if __name__ == "__main__":
    raise SystemExit(main())
