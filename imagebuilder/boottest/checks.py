"""What each boot must show: the API, the scan folder and the web UI checked through the port forward, the data
stick pulled, and the verdict on the guest's own selftest line (boot menu entry, units, kiosk, GPU fallback,
listeners). Each check returns the problems it found ([] when all is well) and adds its figures to `result`.
"""

from __future__ import annotations

import base64
import contextlib
import http.cookiejar
import json
import re
import shutil
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from imagebuilder.boottest.capture import screen_text, screenshot
from imagebuilder.boottest.sticks import (
    INBOX_FILE,
    LETTER_TEXT,
    OCR_TEXT,
    STICK_FILE,
    STICK_LABEL,
    letter_png,
    text_png,
)
from imagebuilder.boottest.vm import STICK_DEVICE, Vm

# What the kiosk screen must show (read off the screenshot by our own CPU engine): the UI's navigation, so neither
# an error page nor a blank browser passes.
KIOSK_TEXT = ("OCR appliance", "New scan")
KIOSK_RECONNECTING = "OCR service is restarting"  # webui.i18n "reconnecting": shown while the web app is away
NO_GPU_BANNER = "No NVIDIA graphics card"  # appliance.gpu.REASONS["no_card"], in the kiosk's banner


# The host's headless Chromium (the harness's UI check and the web UI's browser tests): quiet, offline, no GPU.
HOST_CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# ---- reading text back: character error rate (the boot test's full page, bench.cpu_engine) -------------------


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance, one numpy row at a time (pages have thousands of characters)."""
    if not a or not b:
        return len(a) or len(b)
    codes_b = np.array([ord(c) for c in b])
    positions = np.arange(len(b) + 1)
    previous = positions.copy()
    for i, char in enumerate(a, start=1):
        # Deletion or substitution from the row above; insertions (moving right in this row) via a running minimum.
        candidate = np.empty_like(previous)
        candidate[0] = i
        candidate[1:] = np.minimum(previous[1:] + 1, previous[:-1] + (codes_b != ord(char)))
        previous = np.minimum.accumulate(candidate - positions) + positions
    return int(previous[-1])


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def cer(truth: str, guess: str) -> float:
    truth, guess = normalise(truth), normalise(guess)
    return edit_distance(truth, guess) / max(len(truth), 1)


def check_ocr(vm: Vm, token: str, result: dict) -> list[str]:
    """Through the port forward: a picture of OCR_TEXT must come back as OCR_TEXT (CPU engine)."""
    problems = []
    sent = time.monotonic()
    status, body = vm.http(
        "/ocr",
        token,
        timeout=420,
        body={"image": base64.b64encode(text_png(OCR_TEXT, 900)).decode(), "task_type": "plain_ocr"},
    )
    result["ocr_request_seconds"] = round(time.monotonic() - sent, 1)
    result["seconds_to_first_ocr"] = round(time.monotonic() - vm.started, 1)
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {}
    result["ocr"] = {"status": status, "text": answer.get("text"), "engine": (answer.get("engine") or {}).get("name")}
    if status != 200 or (answer.get("text") or "").strip() != OCR_TEXT:
        problems.append(f"POST /ocr: {status} {answer.get('text') or body[:200]!r}, expected {OCR_TEXT!r}")
    return problems


FULL_PAGE_MAX_CER = 0.05  # what the CPU engine reads on this clean letter is far better; 5% leaves room for a line


def check_full_page(vm: Vm, token: str, result: dict, timeout: float = 1200) -> list[str]:
    """A full A4 letter through the async jobs API (a page takes minutes under emulation: no request waits that
    long), read back with a character error rate of at most FULL_PAGE_MAX_CER."""
    sent = time.monotonic()
    status, body = vm.http(
        "/jobs",
        token,
        timeout=60,
        body={"image": base64.b64encode(letter_png()).decode(), "task": "text", "filename": "letter.png"},
    )
    if status != 202:
        return [f"POST /jobs with a full page: {status} {body[:200]!r}"]
    job_id = json.loads(body)["id"]
    job: dict = {}
    while time.monotonic() - sent < timeout:
        status, body = vm.http(f"/jobs/{job_id}", token, timeout=30)
        job = json.loads(body) if status == 200 else {}
        if job.get("state") in ("done", "failed", "cancelled"):
            break
        time.sleep(10)
    result["full_page_seconds"] = round(time.monotonic() - sent, 1)
    if job.get("state") != "done":
        return [f"full page job {job_id}: {job.get('state', 'no answer')} {job.get('error') or ''}".strip()]
    status, body = vm.http(f"/jobs/{job_id}/result?format=json", token, timeout=60)
    text = (json.loads(body).get("text") or "") if status == 200 else ""
    result["full_page_cer"] = round(cer(LETTER_TEXT, text), 4)
    if result["full_page_cer"] > FULL_PAGE_MAX_CER:
        return [f"full page read with CER {result['full_page_cer']} (> {FULL_PAGE_MAX_CER}): {text[:200]!r}"]
    return []


# An image with the CPU model: each task through /ocr, and the engine that must answer it there (rapidocr stays the
# fast default for spotting and text; every other task is the model's, through llama.cpp).
MODEL_TASKS = {
    "spotting": "cpu",
    "plain_ocr": "cpu",
    "doc_parser": "hunyuan-llamacpp",
    "table": "hunyuan-llamacpp",
    "formula": "hunyuan-llamacpp",
    "chart": "hunyuan-llamacpp",
    "extract": "hunyuan-llamacpp",
    "subtitles": "hunyuan-llamacpp",
    "translation": "hunyuan-llamacpp",
}
TASK_OPTIONS = {"extract": {"fields": ["total", "date"]}, "translation": {"target_lang": "zh"}}


def check_model_tasks(vm: Vm, token: str, result: dict) -> list[str]:
    """An image with the CPU model (selftest llama=active): all nine tasks answer through /ocr, each from the engine
    MODEL_TASKS names (the tiny test model's answers are noise: which engine answered, with 200, is what counts)."""
    problems = []
    result["model_tasks"] = {}
    for task, expected in MODEL_TASKS.items():
        sent = time.monotonic()
        body = {"image": base64.b64encode(text_png(OCR_TEXT, 880)).decode(), "task_type": task}  # not check_ocr's
        status, answer = vm.http("/ocr", token, timeout=900, body={**body, **TASK_OPTIONS.get(task, {})})
        try:
            engine = (json.loads(answer).get("engine") or {}).get("name")
        except ValueError:
            engine = None
        result["model_tasks"][task] = {"status": status, "engine": engine, "seconds": round(time.monotonic() - sent)}
        if status != 200 or engine != expected:
            problems.append(
                f"POST /ocr {task}: {status}, engine {engine}, expected 200 from {expected}: {answer[:200]!r}"
            )
    return problems


@contextlib.contextmanager
def ui_page(vm: Vm, token: str):
    """The web UI in the host's headless Chromium through the forward, as a LAN user, logged in with the token."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium", headless=True, args=HOST_CHROMIUM_FLAGS
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800}, locale="en-US")
            page.goto(f"http://127.0.0.1:{vm.port}/login", timeout=60_000)
            page.fill("input[name=token]", token)
            page.click("button[type=submit]")
            page.wait_for_selector("#upload-form", timeout=60_000)
            yield page
        finally:
            browser.close()


UI_MODEL_WIDTH = 780  # the UI's doc page: a width no other check draws, so it is not answered from the result cache


def check_ui_model_doc(vm: Vm, token: str, shots: Path, result: dict, timeout: float = 900) -> list[str]:
    """An image with the CPU model, in a real browser: upload a picture, run `doc`, and while the job page waits see
    the model's text arrive (its live text, from llama-server's stream) before the result page names
    hunyuan-llamacpp. The tiny test model writes noise: that the text is shown is checked, not what it says."""
    started = time.monotonic()
    seen: list[int] = []  # the live text's length at each change, while the job page still waited
    time_left: list[str] = []
    try:
        with ui_page(vm, token) as page:
            picture = {"name": "ui-doc.png", "mimeType": "image/png", "buffer": text_png(OCR_TEXT, UI_MODEL_WIDTH)}
            page.set_input_files("#file", files=[picture])
            page.check("input[value=doc]", force=True)
            page.click("#start")
            page.wait_for_selector("#live-text", state="attached", timeout=60_000)
            deadline = time.monotonic() + timeout
            # Polled from here: wait_for_function would evaluate a string, which the page's CSP forbids.
            while not page.locator(".engine-line").count():
                if page.locator("#job-error").count():
                    raise RuntimeError(f"the job ended with {page.locator('#job-error').inner_text().strip()!r}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no result page within {timeout:.0f} s")
                live = page.locator("#live-text")
                length = len(live.inner_text()) if live.count() and live.is_visible() else 0
                if length and (not seen or length != seen[-1]):
                    seen.append(length)
                    if len(seen) == 1:
                        page.screenshot(path=str(shots / "ui-model-live.png"), full_page=True)
                said = page.locator("#time-left").inner_text().strip() if page.locator("#time-left").count() else ""
                if said and (not time_left or said != time_left[-1]):
                    time_left.append(said)
                time.sleep(0.3)
            engine = page.locator(".engine-line").inner_text().strip()
            page.screenshot(path=str(shots / "ui-model-result.png"), full_page=True)
    except Exception as e:  # playwright's errors say which step timed out
        return [f"UI doc task on the CPU model failed: {type(e).__name__}: {str(e).splitlines()[0]}"]
    result["ui_model_doc"] = {
        "engine": engine,
        "live_text_lengths": seen,
        "time_left_said": time_left,
        "seconds": round(time.monotonic() - started, 1),
    }
    problems = []
    if not engine.startswith("hunyuan-llamacpp"):
        problems.append(f"UI doc task answered by {engine!r}, expected hunyuan-llamacpp")
    if not seen:
        problems.append("UI doc task: no live text was shown while the job page waited")
    return problems


POISON_DEATHS = 3  # appliance.jobs: the third death of the web app under one job sets it aside (MAX_RETRIES + 1)


def submit(vm: Vm, token: str, png: bytes, name: str, task: str = "text") -> str | None:
    status, body = vm.http(
        "/jobs", token, timeout=60, body={"image": base64.b64encode(png).decode(), "task": task, "filename": name}
    )
    return json.loads(body)["id"] if status == 202 else None


def job_state(vm: Vm, token: str, job_id: str) -> dict:
    status, body = vm.http(f"/jobs/{job_id}", token, timeout=30)
    try:
        return json.loads(body) if status == 200 else {}
    except ValueError:
        return {}


def kiosk_back(screen: str) -> bool:
    """The kiosk's start page, without the banner it shows while the web app is away."""
    return all(words in screen for words in KIOSK_TEXT) and KIOSK_RECONNECTING not in screen


def check_poison_job(vm: Vm, token: str, out: Path, result: dict, timeout: float = 1500) -> list[str]:
    """A job under which the web app dies again and again (here: SIGKILL from the guest's root debug shell each time
    the job runs, as a native crash or the OOM killer would) must end as failed ("Crashed") after POISON_DEATHS
    deaths, a job queued behind it must still complete, and the kiosk must be back on its start page."""
    # Widths no other check uses: a result cache hit would finish the job before it ever ran.
    poison = submit(vm, token, letter_png(1260), "poison.png")  # a full page: minutes under emulation, time to kill
    normal = submit(vm, token, text_png(OCR_TEXT, 860), "after-poison.png")
    if not poison or not normal:
        return ["poison job: POST /jobs refused"]
    started = time.monotonic()
    deaths = 0
    job: dict = {}
    while time.monotonic() - started < timeout:
        job = job_state(vm, token, poison)
        if job.get("state") in ("done", "failed", "cancelled"):
            break
        if job.get("state") == "running":
            status, said = vm.shell("systemctl kill --signal=SIGKILL --kill-whom=main appliance-web.service")
            if status != 0:
                return [f"poison job: could not kill the web app from the debug shell ({status}): {said[-300:]!r}"]
            deaths += 1
            time.sleep(5)  # gone for sure (systemd restarts it after RestartSec=3)
            # Wait until the app answers again.
            while time.monotonic() - started < timeout and not job_state(vm, token, poison):
                time.sleep(3)
            continue
        time.sleep(3)
    result["poison"] = {"deaths": deaths, "seconds": round(time.monotonic() - started, 1), "job": job}
    _, journal = vm.shell("journalctl -b -u appliance-web --no-pager -o short-monotonic | tail -n 200", timeout=120)
    (out / "poison-journal.txt").write_text(journal)
    problems = []
    if job.get("cached"):
        problems.append("poison job: answered from the result cache, so it never ran")
    if job.get("state") != "failed" or job.get("error_kind") != "Crashed" or deaths != POISON_DEATHS:
        said = f"{job.get('state')} {job.get('error_kind')} {job.get('error')}"
        problems.append(f"poison job after {deaths} deaths: {said}")
    after = job_state(vm, token, normal)
    deadline = time.monotonic() + 600
    while after.get("state") not in ("done", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(5)
        after = job_state(vm, token, normal)
    text = ""
    if after.get("state") == "done":
        status, body = vm.http(f"/jobs/{normal}/result?format=json", token, timeout=60)
        text = (json.loads(body).get("text") or "").strip() if status == 200 else ""
    result["poison"]["next_job"] = {"state": after.get("state"), "text": text}
    if text != OCR_TEXT:
        problems.append(f"the job queued behind the poison job: {after.get('state')} {text!r}")
    # The kiosk reconnects by itself (appliance.kiosk, app.js): its start page must be back on the screen, the
    # "restarting" banner gone (the page reloads once the app answers again).
    deadline = time.monotonic() + 300
    seen = ""
    while time.monotonic() < deadline:
        if screenshot(vm, out / "screen-after-poison.png"):
            seen = screen_text(out / "screen-after-poison.png")
            if kiosk_back(seen):
                break
        time.sleep(10)
    result["poison"]["kiosk_text"] = seen[:500]
    if not kiosk_back(seen):
        problems.append(f"kiosk after the poison job shows {seen[:200]!r}")
    return problems


def usb_names(vm: Vm, token: str, path: str) -> list[str] | None:
    _, body = vm.http(f"/usb/list?path={path}", token, timeout=30)
    try:
        return [e["name"] for e in json.loads(body)["entries"]]
    except (ValueError, KeyError, TypeError):
        return None


def check_scan_stick(vm: Vm, token: str, result: dict, timeout: float = 300) -> list[str]:
    """The stick's OCR-INBOX scan goes through the scan folder: its .txt lands in OCR-OUTBOX on the stick (the text
    itself is read back from the stick image after shutdown, see run.boot_once)."""
    started = time.monotonic()
    while True:
        status, body = vm.http("/scan", token, timeout=30)
        try:
            states = {f["name"]: f["state"] for f in json.loads(body)["files"] if f.get("source") == STICK_LABEL}
        except (ValueError, KeyError, TypeError):
            states = {}
        if states.get(INBOX_FILE) in ("done", "failed"):
            break
        if time.monotonic() - started > timeout:
            return [
                f"the scan folder did not finish {INBOX_FILE} from the stick in {timeout:.0f}s: {status} "
                f"{body[:300]!r}"
            ]
        time.sleep(3)
    if states[INBOX_FILE] != "done":
        return [f"the scan folder failed {INBOX_FILE} from the stick: {body[:300]!r}"]
    result["scan_stick_seconds"] = round(time.monotonic() - started, 1)
    return []


def check_read_only_stick(vm: Vm, token: str, result: dict, timeout: float = 120) -> list[str]:
    """A stick the image could mount read-only only: the scan page lists it as read-only and the scan folder leaves
    its OCR-INBOX alone (its files can still be OCR'd from the UI: check_ui_usb_upload)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        status, body = vm.http("/scan", token, timeout=30)
        try:
            scan = json.loads(body)
            sticks = {s["label"]: s.get("read_only") for s in scan["sticks"]}
        except (ValueError, KeyError, TypeError):
            sticks = {}
        if STICK_LABEL in sticks:
            result["stick_read_only"] = sticks[STICK_LABEL]
            taken = [f["name"] for f in scan.get("files", []) if f.get("source") == STICK_LABEL]
            if not sticks[STICK_LABEL] or taken:
                return [f"the dirty NTFS stick: read_only={sticks[STICK_LABEL]}, scan folder took {taken}"]
            return []
        time.sleep(3)
    return [f"the scan page never listed the read-only stick {STICK_LABEL}: {status} {body[:300]!r}"]


def check_ui_usb_upload(vm: Vm, token: str, shots: Path, result: dict) -> list[str]:
    """The web UI in a real browser (host Chromium through the forward, as a LAN user): log in with the token, pick
    STICK_FILE in the in-app USB browser, run plain text OCR, and see OCR_TEXT on the result page."""
    started = time.monotonic()
    try:
        with ui_page(vm, token) as page:
            page.wait_for_selector("#usb-open", timeout=60_000)
            page.click("#usb-open")
            page.click(f"#usb-list button:has-text('{STICK_LABEL}')")
            page.click(f"#usb-list button:has-text('{STICK_FILE}')")
            page.check("input[value=text]", force=True)
            page.click("#start")
            page.wait_for_selector("#out-text", timeout=300_000)
            shown = page.locator("#out-text").inner_text().strip()
            # The scanned page itself must show under its boxes (the guest may still be rasterising it).
            # (polled from here: wait_for_function would evaluate a string, which the page's CSP forbids)
            for _ in range(120):
                if page.locator("img").evaluate_all("imgs => imgs.every(i => i.complete && i.naturalWidth > 0)"):
                    break
                time.sleep(1)
            else:
                raise TimeoutError("the page image did not load within 120 s")
            page.screenshot(path=str(shots / "ui-usb-upload.png"), full_page=True)
    except Exception as e:  # playwright's errors say which step timed out
        return [f"UI upload from the USB browser failed: {type(e).__name__}: {str(e).splitlines()[0]}"]
    result["ui_usb_upload"] = {"text": shown, "seconds": round(time.monotonic() - started, 1)}
    return [] if shown == OCR_TEXT else [f"UI upload from the USB browser showed {shown!r}, expected {OCR_TEXT!r}"]


def check_usb(vm: Vm, token: str, result: dict, pull: bool) -> list[str]:
    """The data stick shows in the in-app USB browser; pulled (`pull`), it goes (unmounted, its folder removed).
    Without `pull` the guest's clean shutdown unmounts it, so what the scan folder wrote is read back whole."""
    names = usb_names(vm, token, STICK_LABEL)
    result["usb_listing"] = names
    if STICK_FILE not in (names or []):
        return [f"the data stick is not in the USB browser: /usb/list?path={STICK_LABEL} -> {names}"]
    if not pull:
        return []
    # Pull the stick: the image must unmount it and drop /media/STICK_LABEL (a stale mount point would stay listed).
    vm.monitor(f"device_del {STICK_DEVICE}")
    deadline = time.monotonic() + 90
    # (None: no answer yet, keep asking; [] is an answer: no stick left)
    while (left := usb_names(vm, token, "")) is None or STICK_LABEL in left:
        if time.monotonic() > deadline:
            result["usb_removed_cleanly"] = False
            inside = usb_names(vm, token, STICK_LABEL)  # the dead mount's files, or an empty leftover folder
            return [f"/media/{STICK_LABEL} still there after the stick was pulled: {left}; it holds {inside}"]
        time.sleep(2)
    result["usb_removed_cleanly"] = True
    return []


# What each boot menu entry must have done, judged from the selftest line.
ENTRY_CHECKS = {
    "normal": lambda r: not r.get("cmdline") or f"unexpected kernel flags {r.get('cmdline')}",
    "toram": lambda r: (
        ("toram" in r.get("cmdline", []) and r.get("medium_device") == "0")
        or f"toram: cmdline {r.get('cmdline')}, boot device still mounted: {r.get('medium_device')}"
    ),
    "safe": lambda r: "nomodeset" in r.get("cmdline", []) or f"safe graphics: cmdline {r.get('cmdline')}",
    "verify": lambda r: r.get("verified") == "ok" or f"medium check: {r.get('verified')}",
}


def gpu_fallback_problems(report: dict, kiosk_text: str) -> list[str]:
    """A gpu image booted without an NVIDIA card (QEMU has none): its NVIDIA units skipped by their ExecCondition,
    not failed; the CPU engine serving; the kiosk's banner saying why. [] for a cpu image (no `gpu` units)."""
    units = dict(item.split(":", 1) for item in report.get("gpu", []))
    if not units:
        return []
    problems = [
        f"{unit} unit: Result={result}, expected exec-condition (skipped without a GPU)"
        for unit, result in units.items()
        if result != "exec-condition"
    ]
    expected = "hunyuan-llamacpp" if report.get("llama") == "active" else "cpu"  # the CPU model keeps every task
    if report.get("engine") != expected:
        problems.append(f"engine {report.get('engine')}, expected the CPU fallback ({expected})")
    if NO_GPU_BANNER not in kiosk_text:
        problems.append(f"the kiosk screen does not say why the GPU is not used ({NO_GPU_BANNER!r})")
    return problems


def loopback_only(listener: str) -> bool:
    """'tcp:127.0.0.1:8000/appliance/1001' (or an older image's '127.0.0.1:8000/appliance') -> True."""
    address = listener.split(":", 1)[1] if listener.startswith(("tcp:", "udp:")) else listener
    return address.startswith(("127.0.0.1:", "[::1]:"))


def selftest_problems(report: dict, result: dict, entry: str, lan: bool, health: int, stick: bool) -> list[str]:
    """The guest's selftest line judged, with what the host saw: the kiosk screen (result's kiosk_rendered and
    kiosk_text) and `health`, the status of /health through the port forward (LAN mode)."""
    problems = []
    if stick and report.get("media") != [STICK_LABEL]:
        problems.append(f"/media holds {report.get('media')}, expected only the data stick [{STICK_LABEL}]")
    verdict = ENTRY_CHECKS[entry](report)
    if verdict is not True:
        problems.append(verdict)
    if report.get("state") != "running":
        problems.append(f"systemd state {report.get('state')}")
    if report.get("failed"):
        problems.append(f"failed units {report['failed']}")
    if report.get("kiosk") != "active" or report.get("browser", "0") in ("0", ""):
        problems.append("kiosk browser not running")
    if not result["kiosk_rendered"]:
        problems.append("the kiosk screen stayed blank (see screen.png)")
    elif not all(words in result["kiosk_text"] for words in KIOSK_TEXT):
        problems.append(f"the kiosk screen does not show the UI: {result['kiosk_text'][:120]!r}")
    problems += gpu_fallback_problems(report, result.get("kiosk_text", ""))
    if report.get("health") != "200":
        problems.append(f"/health inside the guest: {report.get('health')}")
    if lan and health != 200:
        problems.append(f"/health through the port forward: {health}")
    if not lan and not all(loopback_only(a) for a in report.get("listen", [])):
        problems.append(f"listening beyond loopback: {report['listen']}")
    return problems


# ---- persistent storage made from the UI (a stick written raw with the ISO: dd, Etcher, Rufus DD) ------------------

FINISHED = ("done", "failed", "cancelled")
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def ui_opener(token: str) -> urllib.request.OpenerDirector:
    """A browser stand-in for the pages: keeps the session cookie (the forms' CSRF token lives in it), sends the
    LAN token, follows the 303 after a form post."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    opener.addheaders = [("Authorization", f"Bearer {token}")]
    return opener


def persistence_signature(vm: Vm, token: str) -> dict:
    """GET /persistence/state, its signature (`working:state:job:step`, webui.ui.persistence_view) taken apart."""
    status, body = vm.http("/persistence/state", token, timeout=30)
    try:
        signature = json.loads(body).get("signature") if status == 200 else None
    except ValueError:
        signature = None
    if not signature:
        return {}
    working, state, job, step = (signature.split(":") + ["", "", "", ""])[:4]
    return {"working": working == "True", "state": state, "job": job, "step": step}


def check_persistence_refused(vm: Vm, token: str, result: dict) -> list[str]:
    """A stick where live-boot could never use it (an ISO file on Ventoy's exFAT, a file copy on one FAT partition):
    persistent storage must not be offered."""
    seen = persistence_signature(vm, token)
    result["persistence_state"] = seen.get("state")
    if seen.get("state") in ("possible", "incomplete"):
        return [f"persistent storage offered on a stick where it cannot work: {seen}"]
    return []


def check_persistence_create(vm: Vm, token: str, result: dict, timeout: float = 600) -> list[str]:
    """First boot of a raw-written stick: the page offers persistent storage; its form posted (as the person's
    confirmation), the root unit makes the partition; the state must end `exists`, the request `done`."""
    before = persistence_signature(vm, token)
    result["persistence_before"] = before
    if before.get("state") != "possible":
        return [f"persistent storage not offered on a raw-written stick: {before or 'no state'}"]
    opener = ui_opener(token)
    base = f"http://127.0.0.1:{vm.port}"
    try:
        page = opener.open(f"{base}/persistence", timeout=30).read().decode()
        csrf = CSRF_FIELD.search(page)
        if not csrf:
            return ["the persistence page has no form to confirm with"]
        form = urllib.parse.urlencode({"csrf_token": csrf.group(1)}).encode()
        opener.open(f"{base}/persistence", data=form, timeout=30).read()
    except OSError as error:
        return [f"confirming persistent storage on the page: {error}"]
    sent = time.monotonic()
    seen = {}
    while time.monotonic() - sent < timeout:
        time.sleep(5)
        seen = persistence_signature(vm, token)
        if seen and not seen["working"] and seen.get("job") not in ("", "None", "running"):
            break
    result["persistence_after"] = seen
    result["persistence_seconds"] = round(time.monotonic() - sent, 1)
    if seen.get("state") != "exists" or seen.get("job") != "done":
        return [f"persistent storage not made: {seen or 'no state'}"]
    return []


def check_persistence_kept(vm: Vm, token: str, report: dict, result: dict, memory: dict) -> list[str]:
    """A later boot of that stick: /srv/ocr on the new partition (the selftest counts this boot there), the result
    the boot before made is in History; then this boot makes one for the next. `memory` is carried between boots."""
    problems = []
    expected = memory.get("persistent_boots", 0) + 1
    memory["persistent_boots"] = expected
    if str(report.get("boots")) != str(expected):
        problems.append(f"boots={report.get('boots')} on the stick, expected {expected}: /srv/ocr is not persistent")
    if memory.get("job"):
        job = job_state(vm, token, memory["job"])
        status, page = vm.http("/history", token, timeout=30)
        listed = memory["job"] in page.decode(errors="replace")
        result["kept_job"] = {"id": memory["job"], "state": job.get("state"), "in_history": listed}
        if job.get("state") != "done" or status != 200 or not listed:
            problems.append(f"the result made before the reboot ({memory['job']}) is not in History: {job or status}")
    job_id = submit(vm, token, text_png(OCR_TEXT, 860 + 10 * expected), f"kept-{expected}.png")
    deadline = time.monotonic() + 600
    while job_id and time.monotonic() < deadline and job_state(vm, token, job_id).get("state") not in FINISHED:
        time.sleep(5)
    if not job_id or job_state(vm, token, job_id).get("state") != "done":
        problems.append(f"a result to keep for the next boot could not be made ({job_id})")
    memory["job"] = job_id
    return problems
