"""The app under the real WSGI server on loopback, with the real CPU engine, called over HTTP with `requests`;
the reference articles' two client snippets run as published (only the address and image file differ)."""

from __future__ import annotations

import base64
import io
import json

import pytest
import requests
from conftest import serve_in_thread, text_image
from fake_engine import FakeEngine, page_image
from PIL import Image

from appliance.jobs import Jobs
from appliance.ocr.tasks import Request
from webui import create_app
from webui.server import is_loopback, serve

# From the first reference article (ID card example), reformatted onto lines.
ARTICLE_MULTIPART = """
import requests
from PIL import Image
import io
# 准备图像文件
image_path = "id_card.jpg"
with open(image_path, "rb") as f:
    img_bytes = f.read()
# 发送POST请求到HunyuanOCR API
response = requests.post(
    "http://localhost:8000/ocr",
    files={"file": ("image.jpg", img_bytes, "image/jpeg")}
)
# 解析返回结果
if response.status_code == 200:
    result = response.json()
    print("OCR识别结果:")
    for field, value in result.items():
        print(f"{field}: {value}")
else:
    print("请求失败:", response.text)
"""

# From the second reference article (drug instruction example), reformatted onto lines.
ARTICLE_BASE64 = """
import requests
import base64
def ocr_image(image_path):
    # 读取图像并编码为base64
    with open(image_path, "rb") as f:
        img_b64 = base64.b64encode(f.read()).decode('utf-8')
    # 构造请求体
    payload = {
        "image": img_b64,
        "task_type": "doc_parser"  # 指定任务类型:文档解析
    }
    # 调用OCR API
    response = requests.post("http://localhost:8000/ocr", json=payload)
    if response.status_code == 200:
        result = response.json()
        print("识别结果:")
        print(result['text'])
    else:
        print("请求失败:", response.text)
# 调用示例
ocr_image("drug_instruction.jpg")
"""


def run_snippet(snippet: str, url: str, tmp_path, monkeypatch, image: bytes, name: str) -> None:
    (tmp_path / name).write_bytes(image)
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet.replace("http://localhost:8000", url), "<article>", "exec"), {})


def test_first_article_snippet_against_the_cpu_engine(cpu_server, tmp_path, monkeypatch, capsys):
    image = text_image(["Invoice 2026", "Total 42.50"])
    run_snippet(ARTICLE_MULTIPART, cpu_server.url, tmp_path, monkeypatch, image, "id_card.jpg")
    out = capsys.readouterr().out
    assert out.startswith("OCR识别结果:\n")
    assert "\ntext: Invoice 2026\nTotal 42.50\n" in out
    assert "engine: {'name': 'cpu'" in out and "\npages: [{'text': 'Invoice 2026\\nTotal 42.50', 'blocks': [{" in out


def test_second_article_snippet_doc_parser(tmp_path, monkeypatch, capsys):
    """doc_parser is a HunyuanOCR task: against an engine that has it, the snippet prints the text."""
    engine = FakeEngine()
    jobs = Jobs(tmp_path / "data", lambda report: engine)
    live, stop = serve_in_thread(create_app({"DATA_DIR": str(tmp_path / "data"), "ENGINE": "cpu", "JOBS": jobs}))
    try:
        run_snippet(ARTICLE_BASE64, live.url, tmp_path, monkeypatch, text_image(["x"]), "drug_instruction.jpg")
    finally:
        stop()
    assert capsys.readouterr().out == "识别结果:\nHELLO 900x260\n"


def test_second_article_snippet_on_cpu_explains_what_is_needed(cpu_server, tmp_path, monkeypatch, capsys):
    run_snippet(ARTICLE_BASE64, cpu_server.url, tmp_path, monkeypatch, text_image(["x"]), "drug_instruction.jpg")
    out = capsys.readouterr().out
    assert out.startswith("请求失败:")
    body = json.loads(out.split(" ", 1)[1])
    assert body["error"] == "task not available" and "HunyuanOCR model" in body["detail"]


def test_plain_ocr_over_http_with_boxes(cpu_server):
    image = text_image(["Hello Kiosk"], fmt="PNG")
    response = requests.post(
        f"{cpu_server.url}/ocr",
        json={"image": base64.b64encode(image).decode(), "task_type": "plain_ocr"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["text"] == "Hello Kiosk" and result["engine"]["name"] == "cpu"
    x1, y1, x2, y2 = result["pages"][0]["blocks"][0]["box"]
    assert 20 <= x1 < x2 <= 900 and 20 <= y1 < y2 <= 140


def test_async_job_over_http(cpu_server):
    image = text_image(["Page one text"])
    created = requests.post(
        f"{cpu_server.url}/jobs", files={"file": ("scan.jpg", image, "image/jpeg")}, data={"task": "text"}, timeout=30
    )
    assert created.status_code == 202
    job_url = cpu_server.url + created.headers["Location"]
    for _ in range(600):
        status = requests.get(job_url, timeout=10).json()
        if status["state"] in ("done", "failed", "cancelled"):
            break
        import time

        time.sleep(0.1)
    assert status["state"] == "done", status
    txt = requests.get(f"{job_url}/result", params={"format": "txt", "download": 1}, timeout=10)
    assert txt.text == "Page one text\n" and "scan.txt" in txt.headers["Content-Disposition"]
    assert requests.delete(job_url, timeout=10).status_code == 204


def test_errors_over_http(cpu_server):
    too_big = requests.post(
        f"{cpu_server.url}/ocr", files={"file": ("x.bin", b"0" * (64 * 1024 * 1024 + 10))}, timeout=60
    )
    assert too_big.status_code == 413 and too_big.json()["error"] == "file too large"
    health = requests.get(f"{cpu_server.url}/health", timeout=10).json()
    assert health["web"]["ready"] and health["engine"]["ready"] and health["engine"]["info"]["name"] == "cpu"


def test_serve_refuses_the_lan_without_a_token(tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    with pytest.raises(SystemExit, match="--lan-token"):
        serve("0.0.0.0", 8000, engine="cpu", model_dir=None, data_dir=str(tmp_path))


def test_appliance_serve_command_starts_and_stops_cleanly(tmp_path):
    """`appliance serve` as the kiosk's service runs it: answers /health, exits 0 on SIGTERM (systemd's stop)."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "serve", "--port", str(port), "--engine", "cpu", "--data", str(tmp_path)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = requests.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
                if health["engine"]["state"] != "loading":
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "slow"
            time.sleep(0.3)
        assert health["engine"]["ready"] and health["engine"]["info"]["name"] == "cpu"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert (tmp_path / "jobs.sqlite").exists()


def test_many_waiting_ocr_requests_leave_the_app_answering(tmp_path):
    """Issue 14's freeze: 1 long + 15 small synchronous POST /ocr at once used to take every server thread. Now
    at most SYNC_SLOTS wait; the rest get 503 + Retry-After at once; GET /health and the pages stay quick; a client
    that hangs up gives its thread back and its job is cancelled."""
    import concurrent.futures
    import socket
    import threading
    import time

    gate = threading.Event()  # the engine is busy with the first page until the test opens it
    jobs = Jobs(tmp_path / "data", lambda report: FakeEngine(gate=gate))
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "ENGINE": "cpu", "JOBS": jobs})
    live, stop = serve_in_thread(app)
    slots = app.config["SYNC_SLOTS"]
    try:

        def ocr(i):
            files = {"file": (f"p{i}.png", png(i), "image/png")}
            return requests.post(f"{live.url}/ocr", files=files, data={"task": "text"}, timeout=60)

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = [pool.submit(ocr, i) for i in range(16)]
            deadline = time.monotonic() + 20
            while sum(a.done() for a in answers) < 16 - slots and time.monotonic() < deadline:
                time.sleep(0.1)
            refused = [a.result() for a in answers if a.done()]
            assert len(refused) == 16 - slots and all(r.status_code == 503 for r in refused)
            assert all(int(r.headers["Retry-After"]) >= 1 and "POST /jobs" in r.json()["detail"] for r in refused)
            for path in ("/health", "/", "/jobs"):
                started = time.monotonic()
                assert requests.get(live.url + path, timeout=5).status_code == 200
                assert time.monotonic() - started < 1.0, path
            gate.set()
            assert sorted(a.result().status_code for a in answers) == [200] * slots + [503] * (16 - slots)

        gate.clear()
        jobs.submit(png(98), "blocker.png", Request.make("text"))  # holds the engine: the next job waits queued
        raw = socket.create_connection(("127.0.0.1", int(live.url.rsplit(":", 1)[1])))
        body = png(99)
        boundary = "b0undary"
        form = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="gone.png"\r\n'
                f"Content-Type: image/png\r\n\r\n"
            ).encode()
            + body
            + f"\r\n--{boundary}--\r\n".encode()
        )
        head = (
            f"POST /ocr HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(form)}\r\n\r\n"
        )
        raw.sendall(head.encode() + form)
        deadline = time.monotonic() + 10
        while not any(j.name == "gone.png" for j in jobs.list()) and time.monotonic() < deadline:
            time.sleep(0.05)
        raw.close()  # the caller hangs up while its page waits behind the gated one
        deadline = time.monotonic() + 10
        gone = next(j for j in jobs.list() if j.name == "gone.png")
        while jobs.get(gone.id).state not in ("cancelled",) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert jobs.get(gone.id).state == "cancelled"
        assert app.extensions["backend"].sync_slots._value == slots  # its thread and slot are free again
        gate.set()
    finally:
        gate.set()
        stop()


def png(seed: int) -> bytes:
    """A small distinct image per request (so none is answered from the result cache)."""
    buf = io.BytesIO()
    page_image((40 + seed, 20)).save(buf, format="PNG")
    return buf.getvalue()


PREVIEW_SERVER = """
import sys, threading
sys.path[:0] = sys.argv[2:4]
from fake_engine import FakeEngine, page_image
from appliance.jobs import Jobs
from webui import create_app
from webui.server import make_server

app = create_app({"DATA_DIR": sys.argv[1], "ENGINE": "cpu", "JOBS": Jobs(sys.argv[1], lambda r: FakeEngine())})
server = make_server(app, "127.0.0.1", 0)
print(server.effective_port, flush=True)
server.run()
"""
PREVIEW_MEMORY_BOUND = 1024 * 2**20  # bytes of peak RSS for the web app serving 16 previews of a 100 MP page at once


def test_sixteen_previews_of_a_100_megapixel_page_stay_under_the_memory_bound(tmp_path):
    """Issue 14: a 25 KB 10000x10000 1-bit PNG took the server from 1.1 to 2.8 GB with four previews and kept it.
    Previews now decode small, two at a time, and hand the memory back."""
    import concurrent.futures
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parents[1]
    server = subprocess.Popen(
        [sys.executable, "-c", PREVIEW_SERVER, str(tmp_path / "data"), str(tests.parent), str(tests)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{server.stdout.readline().strip()}"
        buf = io.BytesIO()
        Image.new("1", (10000, 10000), 1).save(buf, format="PNG")
        job = requests.post(f"{url}/jobs", files={"file": ("huge.png", buf.getvalue(), "image/png")}, timeout=60)
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            previews = list(pool.map(lambda _: requests.get(f"{url}/jobs/{job_id}/pages/1", timeout=120), range(16)))
        assert all(p.status_code == 200 and p.headers["Content-Type"] == "image/jpeg" for p in previews)
        assert Image.open(io.BytesIO(previews[0].content)).size == (1600, 1600)
        status = Path(f"/proc/{server.pid}/status").read_text()
        peak = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024
        print(f"peak RSS with 16 previews of a 100 MP page: {peak / 2**20:.0f} MiB")
        assert peak < PREVIEW_MEMORY_BOUND
    finally:
        server.terminate()
        server.wait(10)
