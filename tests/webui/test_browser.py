"""End to end in headless Debian Chromium (driven by Playwright over CDP; Playwright's own browsers are not used):
the real server, the real CPU engine, a real image. Screenshots land in out/webui/ for people to look at."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
from conftest import text_image

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Debian chromium is not installed (make test installs it)", allow_module_level=True)

from imagebuilder.boottest.checks import HOST_CHROMIUM_FLAGS  # noqa: E402

SHOTS = Path(__file__).resolve().parents[2] / "out" / "webui"
FLAGS = HOST_CHROMIUM_FLAGS


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with playwright_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1280, "height": 800},
            locale="en-US",
            accept_downloads=True,
        )
        yield context
        context.close()


@pytest.fixture
def page(browser):
    page = browser.new_page()
    problems = []
    page.on("console", lambda msg: msg.type == "error" and problems.append(msg.text))
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on(
        "request",
        lambda req: (
            req.url.startswith(("http://127.0.0.1", "data:", "blob:"))
            or problems.append(f"request outside the appliance: {req.url}")
        ),
    )
    yield page
    page.close()
    assert problems == []  # no script errors, no CSP violations, nothing fetched from elsewhere


def test_upload_result_boxes_download_language(page, cpu_server, tmp_path):
    SHOTS.mkdir(parents=True, exist_ok=True)
    image = tmp_path / "receipt.jpg"
    image.write_bytes(text_image(["Invoice 2026", "Total 42.50"]))

    page.goto(cpu_server.url + "/")
    assert page.locator("nav").inner_text().startswith("New scan")
    page.set_input_files("#file", str(image))
    assert page.locator("#chosen-name").inner_text() == "receipt.jpg"
    page.check("input[value=spotting]", force=True)
    page.click("#start")
    page.wait_for_url("**/job/*")
    page.wait_for_selector("#out-text", timeout=120_000)  # the page polls the job, then shows the result

    assert page.locator("#out-text").inner_text() == "Invoice 2026\nTotal 42.50"
    boxes = page.locator("svg.overlay rect.box")
    assert boxes.count() == 2
    first = boxes.first.bounding_box()
    assert first["width"] > 50 and first["height"] > 10  # drawn, over the picture, at a visible size
    picture = page.locator(".page-frame img").bounding_box()
    assert picture["x"] <= first["x"] and first["x"] + first["width"] <= picture["x"] + picture["width"]
    assert page.evaluate("document.querySelector('.page-frame img').naturalWidth") > 0  # the page image loaded
    boxes.first.click()
    assert page.locator("#box-text").inner_text() == "Invoice 2026"
    page.screenshot(path=SHOTS / "result-en.png", full_page=True)

    with page.expect_download() as download:
        page.click("a[data-format=json]")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name == "receipt.json"
    result = json.loads(saved.read_text())
    assert result["text"] == "Invoice 2026\nTotal 42.50" and result["engine"]["name"] == "cpu"

    page.click("a[data-lang=zh]")
    page.wait_for_selector("text=新建识别")
    assert page.locator("[data-tab=text]").inner_text() == "文本"
    assert page.locator("#out-text").inner_text() == "Invoice 2026\nTotal 42.50"
    page.screenshot(path=SHOTS / "result-zh.png", full_page=True)
    page.goto(cpu_server.url + "/history")  # remembered across pages (cookie)
    assert "历史记录" in page.locator("h1").inner_text()
    page.click("a[data-lang=en]")
    page.wait_for_selector("h1:has-text('History')")


def test_pick_a_file_from_the_usb_stick(page, cpu_server):
    stick = cpu_server.media / "SANDISK" / "scans"
    stick.mkdir(parents=True)
    (stick / "letter.png").write_bytes(text_image(["Dear Customer"], fmt="PNG"))

    page.goto(cpu_server.url + "/")
    page.screenshot(path=SHOTS / "home-en.png", full_page=True)
    page.click("#usb-open")
    page.click("#usb-list button:has-text('SANDISK')")
    page.click("#usb-list button:has-text('scans')")
    page.screenshot(path=SHOTS / "usb-browser.png")
    page.click("#usb-list button:has-text('letter.png')")
    assert not page.locator("#usb").is_visible()
    assert page.locator("#chosen-name").inner_text() == "SANDISK/scans/letter.png"
    page.check("input[value=text]", force=True)
    page.click("#start")
    page.wait_for_selector("#out-text", timeout=120_000)
    assert page.locator("#out-text").inner_text() == "Dear Customer"
    assert page.locator("h1.job-name").inner_text() == "letter.png"

    # Save the outputs back onto the stick, next to the scan.
    page.click("#usb-open")
    assert not page.locator("#usb-here").is_visible()  # the list of sticks is not a folder to save into
    page.click("#usb-list button:has-text('SANDISK')")
    page.click("#usb-list button:has-text('scans')")
    assert page.locator("#usb-list button:has-text('letter.png')").count() == 0  # folders only in this mode
    page.click("#usb-here")
    assert "Saved to /SANDISK/scans" in page.locator("#flash").inner_text()
    assert (stick / "letter.txt").read_text() == "Dear Customer\n"
    assert {p.name for p in stick.iterdir()} == {"letter.png", "letter.txt", "letter.md", "letter.json", "letter.pdf"}


DATA_TRANSFER_JS = """([name, type, b64]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, {type}));
  return transfer;
}"""


def test_drag_a_file_onto_the_drop_zone(page, cpu_server):
    """A file dragged from another window onto the drop zone (a DataTransfer carrying a File, as a real drag
    delivers it) is the one uploaded; the real CPU engine's text comes back."""
    import base64

    page.goto(cpu_server.url + "/")
    image = base64.b64encode(text_image(["Dropped Receipt 88"], fmt="PNG")).decode()
    transfer = page.evaluate_handle(DATA_TRANSFER_JS, ["dropped.png", "image/png", image])
    page.dispatch_event("#drop", "dragenter", {"dataTransfer": transfer})
    page.dispatch_event("#drop", "dragover", {"dataTransfer": transfer})
    assert "over" in page.locator("#drop").get_attribute("class").split()  # the zone shows it will take the file
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    assert "over" not in page.locator("#drop").get_attribute("class").split()
    assert page.locator("#chosen-name").inner_text() == "dropped.png"
    assert page.evaluate("document.getElementById('file').files[0].name") == "dropped.png"  # what the form sends
    page.check("input[value=text]", force=True)
    page.click("#start")
    page.wait_for_url("**/job/*")
    page.wait_for_selector("#out-text", timeout=120_000)
    assert page.locator("h1.job-name").inner_text() == "dropped.png"
    assert page.locator("#out-text").inner_text() == "Dropped Receipt 88"


def test_cpu_engine_greys_out_the_model_only_tasks(page, cpu_server):
    page.goto(cpu_server.url + "/")
    extract = page.locator("label.task:has(input[value=extract])")
    assert page.locator("input[value=extract]").is_disabled() and "needs the HunyuanOCR model" in extract.inner_text()
    assert page.locator("input[value=spotting]").is_enabled()
    page.goto(cpu_server.url + "/status")
    assert page.locator("#engine-name").inner_text() == "cpu"
    page.screenshot(path=SHOTS / "status-en.png", full_page=True)


@pytest.fixture(scope="module")
def model_server(tmp_path_factory):
    """The UI over an engine that has every task (a test double standing in for HunyuanOCR on a GPU)."""
    from conftest import serve_in_thread
    from fake_engine import FakeEngine

    from appliance.jobs import Jobs
    from webui import create_app

    data = tmp_path_factory.mktemp("model-server")
    engine = FakeEngine()
    jobs = Jobs(data, lambda report: engine)
    live, stop = serve_in_thread(create_app({"DATA_DIR": str(data), "ENGINE": "cpu", "JOBS": jobs}))
    jobs.wait_engine(10)
    live.engine = engine
    yield live
    stop()


def test_extraction_preset_to_fields_table(page, model_server, tmp_path):
    image = tmp_path / "invoice.png"
    image.write_bytes(text_image(["x"], fmt="PNG"))
    page.goto(model_server.url + "/")
    assert not page.locator("#fields").is_visible()  # shown only for the extract task
    page.locator("label.task:has(input[value=extract])").click()
    page.click("button.preset:has-text('VAT invoice')")
    assert page.locator("#fields").input_value().startswith("发票代码,发票号码,开票日期")
    page.set_input_files("#file", str(image))
    page.click("#start")
    page.wait_for_selector("#out-text")  # the result page (after the progress page's reload, if there was one)
    page.click("[data-tab=fields]")
    page.wait_for_selector("[data-panel=fields]", state="visible")
    rows = page.locator("#out-fields tbody tr")
    assert rows.count() == 8 and rows.first.inner_text() == "发票代码\tvalue of 发票代码"
    page.screenshot(path=SHOTS / "fields-en.png", full_page=True)


FORMULA_MARKDOWN = r"""# Results

Energy $E = mc^2$, inline \(\alpha_1 + \beta_1\), and money that is not a formula: $5 and $6.

$$
\left( \begin{matrix} 1 \\ 2 \\ 3 \\ 4 \\ 5 \end{matrix} \right) \cdot \vec{v} = \sum_{i=1}^{n} x_i
$$

$$f(x) = \begin{cases} 1 & x > 0 \\ 0 & x = 0 \\ -1 & x < 0 \\ \text{n/a} & \text{otherwise} \end{cases}$$

| quantity | formula |
| --- | --- |
| area | $\pi r^2$ |
| broken | $\frac{1}{$ |
| unknown | $\notacommand{x}$ |

<table><tr><td>HTML cell</td><td>\[ x^2 \]</td></tr></table>
"""


def test_document_formulas_render_with_katex(page, model_server, tmp_path):
    """LaTeX in the model's Markdown is drawn by the vendored KaTeX (CSP intact: the fixture fails on a violation),
    tables stay tables, and LaTeX KaTeX cannot read shows its source instead of breaking the page."""
    image = tmp_path / "paper.png"
    image.write_bytes(text_image(["Formula page"], fmt="PNG"))
    model_server.engine.markdown = FORMULA_MARKDOWN
    try:
        page.goto(model_server.url + "/")
        page.locator("label.task:has(input[value=doc])").click()
        page.set_input_files("#file", str(image))
        page.click("#start")
        page.wait_for_selector("#out-text")  # the result page (after the progress page's reload, if there was one)
        page.click("[data-tab=markdown]")
        page.wait_for_selector("[data-panel=markdown]", state="visible")
    finally:
        model_server.engine.markdown = None
    markdown = page.locator(".markdown")
    assert markdown.locator(".katex").count() == 6  # E=mc^2, alpha+beta, matrix, cases, pi r^2, x^2
    assert markdown.locator(".katex-display").count() == 3  # $$...$$ and \[...\]
    assert "E=mc2" in markdown.locator(".katex-html").first.inner_text().replace(" ", "").replace("\n", "")
    assert "money that is not a formula: $5 and $6." in markdown.inner_text()
    assert markdown.locator(".math-error").all_inner_texts() == [r"$\frac{1}{$", r"$\notacommand{x}$"]
    tables = markdown.locator("table")
    assert tables.count() == 2
    assert tables.first.locator("thead th").all_inner_texts() == ["quantity", "formula"]
    assert tables.first.locator("tbody tr").count() == 3 and tables.first.locator("td .katex").count() == 1
    assert tables.nth(1).locator("td .katex-display").count() == 1  # math inside the model's HTML table too
    arrow = markdown.locator(".katex .accent .overlay").first.bounding_box()
    letter = markdown.locator(".katex .accent .mathnormal").first.bounding_box()
    assert arrow["y"] < letter["y"] + letter["height"] / 2  # \vec's arrow starts above the v's middle (no CSS clash)
    page.wait_for_function(
        "document.fonts.ready.then(() => [...document.fonts]"
        ".some((f) => f.family === 'KaTeX_Main' && f.status === 'loaded'))"
    )  # the local woff2 fonts, not a system fallback
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / "formulas-en.png", full_page=True)


def three_page_pdf(tmp_path):
    """tmp_path/long.pdf: three small pages with ink (blank pages would skip the engine)."""
    import io

    from fake_engine import page_image

    pages = [page_image((300, 400)) for _ in range(3)]
    buf = io.BytesIO()
    pages[0].save(buf, format="PDF", save_all=True, append_images=pages[1:])
    (tmp_path / "long.pdf").write_bytes(buf.getvalue())
    return tmp_path / "long.pdf"


def test_progress_page_by_page_and_cancel(page, model_server, tmp_path):
    import threading

    pdf = three_page_pdf(tmp_path)
    gate = model_server.engine.gate = threading.Event()  # hold the engine inside page 1
    try:
        page.goto(model_server.url + "/")
        page.set_input_files("#file", str(pdf))
        page.click("#start")
        page.wait_for_selector("#progress-text:has-text('Page 1 of 3')")
        assert page.locator("#job-state").inner_text() == "Working"
        page.screenshot(path=SHOTS / "progress-en.png")
        page.click("#cancel")
        page.wait_for_selector("#progress-text:has-text('Page 1 of 3')")  # still on page 1: stops before page 2
        cancel = page.locator("#cancel")
        assert cancel.is_disabled() and "Cancelling" in cancel.inner_text()  # said at once, not clickable twice
        gate.set()
        page.wait_for_selector("#job-state:has-text('Cancelled')")
        note = page.locator("#job-error")
        assert "Cancelled after 1 of 3 pages" in note.inner_text() and "info" in note.get_attribute("class")
        assert page.locator("#out-text").inner_text().startswith("HELLO")  # the page read is kept
    finally:
        gate.set()
        model_server.engine.gate = None


class Permits:
    """A gate for the fake engine that lets one page through per permit (threading.Event lets all through)."""

    def __init__(self):
        self.semaphore = threading.Semaphore(0)

    def wait(self, timeout=None) -> bool:
        return self.semaphore.acquire(timeout=timeout)

    def release(self, n: int = 1) -> None:
        self.semaphore.release(n)


def test_a_long_job_says_other_jobs_take_a_turn(page, model_server, tmp_path):
    """Issue 14 item 3: a long job lets a waiting one go first; its page says so while it waits, then goes on."""
    import io

    from fake_engine import page_image

    pdf = three_page_pdf(tmp_path)
    jobs = model_server.jobs
    permits = model_server.engine.gate = Permits()
    jobs.turn_seconds = 0  # a turn is one page here (60 s in the product)
    try:
        page.goto(model_server.url + "/")
        page.set_input_files("#file", str(pdf))
        page.click("#start")
        page.wait_for_selector("#progress-text:has-text('Page 1 of 3')")
        short = io.BytesIO()
        page_image((64, 32)).save(short, format="PNG")
        page.request.post(
            model_server.url + "/jobs",
            multipart={"file": {"name": "short.png", "mimeType": "image/png", "buffer": short.getvalue()}},
        )
        permits.release()  # page 1 of the long job; the short job then waits at the gate
        note = page.locator("#turn-note")
        note.wait_for(state="visible", timeout=10_000)
        assert note.inner_text() == "Waiting: other jobs take a turn. 1 of 3 pages are read; it goes on by itself."
        assert page.locator("#job-state").inner_text() == "Waiting"
        page.screenshot(path=SHOTS / "turn-en.png")
        permits.release(10)
        page.wait_for_selector("#out-text", timeout=20_000)
        assert page.locator("#job-state").inner_text() == "Done" and page.locator("svg.overlay").count() == 3
    finally:
        permits.release(100)
        model_server.engine.gate = None
        jobs.turn_seconds = 60


class HeldAtText:
    """The real llama.cpp client, its answer held at the texts it hands on_text until the test lets each go
    (`next_text`): the job page can be looked at while the job runs. The server writes on meanwhile; its stream
    waits in the socket."""

    def __init__(self, inner):
        self.inner, self.info, self.tasks = inner, inner.info, inner.tasks
        self.page_seconds = inner.page_seconds  # its figures from the warm-up, as the start page shows them
        self.texts: list[str] = []  # what reached on_text, in order
        self.held = threading.Semaphore(0)  # one release per text
        self.holding = threading.Event()  # set while a text is held
        self.hold = True  # False: the rest of the answer goes through

    def recognize(self, image, request, on_text=None):
        def held(text, tokens):
            on_text(text, tokens)
            if text.strip() and self.hold:
                self.texts.append(text)
                self.holding.set()
                assert self.held.acquire(timeout=120), "the test never let the text go"
                self.holding.clear()

        return self.inner.recognize(image, request, held)

    def next_text(self, timeout: float = 120) -> str | None:
        """Let the held text go; the next one, once it is held (None when the answer ended first)."""
        count = len(self.texts)
        self.held.release()
        deadline = time.monotonic() + timeout
        while len(self.texts) == count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.texts[-1] if len(self.texts) > count else None

    def let_go(self) -> None:
        self.hold = False
        self.held.release()

    def close(self):
        self.inner.close()


@pytest.fixture
def llama_ui(llama_server, hunyuan_gguf, tmp_path):
    """The UI over the real llama-server through the product's own opener (warm-up, page figures), held."""
    from conftest import serve_in_thread

    from appliance.jobs import Jobs
    from appliance.ocr.engines import select
    from webui import create_app

    url, _, _ = llama_server
    engine = HeldAtText(select.open_llamacpp("hunyuan-llamacpp", hunyuan_gguf, url=url))
    jobs = Jobs(tmp_path / "data", lambda report: engine)
    live, stop = serve_in_thread(create_app({"DATA_DIR": str(tmp_path / "data"), "ENGINE": "cpu", "JOBS": jobs}))
    assert jobs.wait_engine(60)["ready"]
    live.engine = engine
    yield live
    engine.let_go()  # whatever the test left held
    stop()


def test_the_page_being_read_is_shown_as_the_model_writes_it(llama_ui, page, tmp_path):
    """llama.cpp's answer on the job page while it streams: the text so far in the box, growing, with the time left
    (or "longer than usual") under the progress bar, before the job has finished."""
    image = tmp_path / "note.png"
    image.write_bytes(text_image(["Invoice 42", "Total 17.00"], fmt="PNG"))
    from appliance.ocr import pace

    engine = llama_ui.engine
    page.goto(llama_ui.url + "/")
    page.locator("label.task:has(input[value=text])").click()
    page.set_input_files("#file", str(image))
    page.click("#start")
    assert engine.holding.wait(120)
    first = engine.texts[-1]
    live = page.locator("#live-text")
    shows = "t => document.querySelector('#live-text').textContent === t"
    page.wait_for_function(shows, arg=first[-pace.TAIL_CHARS :])
    assert live.is_visible() and page.locator("#job-state").inner_text() == "Working"
    time_left = page.locator("#time-left")
    page.wait_for_function("() => document.querySelector('#time-left').textContent !== ''")
    said = time_left.inner_text()
    assert re.fullmatch(r"About \d+ (s|min)( \d+ s)? left|This page is taking longer than usual", said), said
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / "live-text-en.png")
    second = engine.next_text()
    assert second is not None and second.startswith(first) and len(second) > len(first)  # a model that writes on
    page.wait_for_function(shows, arg=second[-pace.TAIL_CHARS :])
    assert page.locator("#job-state").inner_text() == "Working"
    engine.let_go()
    page.wait_for_selector("#out-text", timeout=120_000)  # the result page
    assert page.locator("#live-text").count() == 0
    page.wait_for_load_state("networkidle")  # its page image, before the server stops


def test_time_left_in_words_in_both_languages(page, tmp_path):
    """The job page says the time left from GET /jobs/<id>'s live figures, in coarse "about" steps, in English and
    Chinese; an answer already longer than usual says so instead of a number."""
    from conftest import serve_in_thread
    from fake_engine import FakeEngine

    from appliance.jobs import Jobs
    from webui import create_app

    engine = FakeEngine(gate=threading.Event())
    engine.page_seconds = {"chart": 600}  # the PC's usual chart page: 10 minutes
    engine.stream = [("| year | sales |", 5)]
    jobs = Jobs(tmp_path / "data", lambda report: engine)
    live, stop = serve_in_thread(create_app({"DATA_DIR": str(tmp_path / "data"), "ENGINE": "cpu", "JOBS": jobs}))
    image = tmp_path / "chart.png"
    image.write_bytes(text_image(["Sales 2026"], fmt="PNG"))
    try:
        assert jobs.wait_engine(10)["ready"]
        page.goto(live.url + "/")
        for seconds, words in [(3, "5 s"), (42, "40 s"), (59, "1 min"), (80, "1 min 20 s"), (1000, "17 min")]:
            assert page.evaluate("s => sayDuration(s)", seconds) == words
        page.locator("label.task:has(input[value=chart])").click()
        page.set_input_files("#file", str(image))
        page.click("#start")
        page.wait_for_selector("#time-left:has-text('About 10 min left')")
        assert page.locator("#live-text").inner_text() == "| year | sales |"
        page.click("a[data-lang=zh]")
        page.wait_for_selector("#time-left:has-text('预计还需约 10 分钟')")
        assert page.evaluate("s => sayDuration(s)", 80) == "1 分 20 秒"
        page.screenshot(path=SHOTS / "live-text-zh.png")
        engine.gate.set()
        page.wait_for_selector("#out-text")
        engine.gate.clear()
        engine.stream = [("x" * 3000, 1001)]  # past a usual chart answer (400 tokens)
        image.write_bytes(text_image(["Sales 2027"], fmt="PNG"))  # another file: not the cached result
        page.goto(live.url + "/")
        page.locator("label.task:has(input[value=chart])").click()
        page.set_input_files("#file", str(image))
        page.click("#start")
        page.wait_for_selector("#time-left:has-text('此页耗时比平时长')")
        page.click("a[data-lang=en]")
        page.wait_for_selector("#time-left:has-text('This page is taking longer than usual')")
    finally:
        page.goto(live.url + "/lang/en")  # the browser is the module's: English for the tests after this one
        page.goto("about:blank")  # nothing of this server's left polling when it stops
        engine.gate.set()
        stop()


@pytest.fixture(scope="module")
def scan_server(tmp_path_factory):
    """The UI with a scan folder (`appliance serve --scan ROOT`) over the fake engine, with short quiet periods."""
    from conftest import serve_in_thread
    from fake_engine import FakeEngine

    from appliance.jobs import Jobs
    from webui import create_app

    base = tmp_path_factory.mktemp("scan-server")
    (base / "media").mkdir()
    jobs = Jobs(base / "data", lambda report: FakeEngine())
    options = {"quiet": 0.2, "give_up": 0.6, "rescan": 0.3, "media_dirs": (str(base / "media"),)}
    app = create_app(
        {
            "DATA_DIR": str(base / "data"),
            "ENGINE": "cpu",
            "JOBS": jobs,
            "SCAN_DIR": str(base / "scan"),
            "SCAN_OPTIONS": options,
            "USB_ROOT": str(base / "media"),
        }
    )
    live, stop = serve_in_thread(app)
    jobs.wait_engine(10)
    live.root = base / "scan"
    yield live
    app.extensions["backend"].scanner.stop(10)
    stop()


def test_scan_folder_page_follows_the_queue_without_reloading(page, scan_server):
    inbox = scan_server.root / "inbox"
    page.goto(scan_server.url + "/")
    page.click("nav a:has-text('Scan folder')")
    page.wait_for_selector("#scan-empty:visible")
    page.evaluate("window.stillThisPage = true")  # gone if the page reloads
    (inbox / "doc").mkdir(exist_ok=True)
    (inbox / "doc" / "late arrival.png").write_bytes(text_image(["Late"], fmt="PNG"))
    (inbox / "cut.png").write_bytes(text_image(["Cut"], fmt="PNG")[:60])
    page.wait_for_selector("#scan-files tr:has-text('late arrival.png') .state-done", timeout=30_000)
    page.wait_for_selector("#scan-files tr:has-text('cut.png') .state-failed", timeout=30_000)
    row = page.locator("#scan-files tr:has-text('late arrival.png')")
    assert "Document to Markdown" in row.inner_text() and "outbox/doc/" in row.inner_text()
    assert page.locator("[data-count=done]").inner_text() == "1"
    assert page.locator("[data-count=failed]").inner_text() == "1"
    assert page.evaluate("window.stillThisPage") is True
    assert page.locator("#scan-retry-all").is_visible()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / "scan-en.png", full_page=True)

    page.click("#scan-retry-all")
    page.wait_for_selector("#flash:has-text('Moved 1 file(s) back into the inbox')")
    page.click("a[data-lang=zh]")
    page.wait_for_selector("h1:has-text('扫描文件夹')")
    page.screenshot(path=SHOTS / "scan-zh.png", full_page=True)
    page.click("a[data-lang=en]")


def test_start_screen_switches_to_the_form_when_the_engine_is_ready(page, tmp_path):
    """Power-on: the kiosk opens before the engine has loaded. It shows the engine's words, then the form itself."""
    import threading

    from conftest import serve_in_thread
    from fake_engine import FakeEngine

    from appliance.jobs import Jobs
    from appliance.ocr import steps
    from webui import create_app

    gate, step = threading.Event(), threading.Event()

    def opener(progress):
        progress("loading the model weights (1 of 4)")
        assert step.wait(30)
        steps.report(progress, "vllm_weights", "40 s", percent=75)  # a step the page says in its own language
        assert gate.wait(30)
        return FakeEngine()

    jobs = Jobs(tmp_path / "data", opener)
    live, stop = serve_in_thread(create_app({"DATA_DIR": str(tmp_path / "data"), "ENGINE": "cpu", "JOBS": jobs}))
    try:
        page.goto(live.url + "/")
        assert page.locator("#engine-progress").text_content() == "loading the model weights (1 of 4)"
        assert page.locator("#upload-form").count() == 0 and not page.locator("#engine-percent").is_visible()
        step.set()
        page.wait_for_selector("#engine-progress:has-text('loading HunyuanOCR onto the GPU')")  # without reloading
        assert page.locator("#engine-percent").get_attribute("value") == "75"
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SHOTS / "starting-en.png")
        gate.set()
        page.wait_for_selector("#upload-form", timeout=10_000)
        assert page.locator("#engine-splash").count() == 0
    finally:
        step.set()
        gate.set()
        stop()


# Everything a finger presses: at least this tall (WCAG 2.5.5 / platform guidance, ~44 CSS px), on either screen.
TOUCH_PX = 44
TOUCH_TARGETS = "button, a.button, .top nav a, .langs a, .task-card, details.card > summary"
LAYOUT_JS = """([selector, minimum]) => ({
  scrollWidth: document.documentElement.scrollWidth,
  innerWidth: window.innerWidth,
  small: Array.from(document.querySelectorAll(selector))
    .filter((el) => el.offsetParent !== null && !el.closest("dialog:not([open]), template"))
    .map((el) => [el.id || el.className || el.tagName, el.textContent.trim().slice(0, 30),
                  el.getBoundingClientRect().height])
    .filter(([, , height]) => height < minimum - 0.5),
})"""


@pytest.mark.parametrize("width,height", [(1920, 1080), (1280, 800)])
def test_touch_layout_fits_the_screen(page, model_server, scan_server, tmp_path, width, height):
    """Kiosk screens: no sideways scrolling and finger-sized controls on the home, result and scan-folder pages."""
    import requests

    image = text_image(["Invoice 2026", "Total 42.50"], fmt="PNG")
    job = requests.post(
        model_server.url + "/jobs", files={"file": ("invoice.png", image)}, data={"task": "doc"}, timeout=30
    ).json()
    model_server.jobs.wait(job["id"], 30)
    (scan_server.root / "inbox" / "layout check.png").write_bytes(image)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": width, "height": height})
    pages = {
        "home": model_server.url + "/",
        "result": f"{model_server.url}/job/{job['id']}",
        "scan": scan_server.url + "/scan-folder",
        "status": model_server.url + "/status",
        "history": model_server.url + "/history",
    }
    problems = []
    for name, url in pages.items():
        page.goto(url)
        if name == "scan":
            page.wait_for_selector("#scan-files tr:has-text('layout check.png') .state-done", timeout=30_000)
        page.screenshot(path=SHOTS / f"layout-{name}-{width}x{height}.png", full_page=True)
        layout = page.evaluate(LAYOUT_JS, [TOUCH_TARGETS, TOUCH_PX])
        if layout["scrollWidth"] > layout["innerWidth"]:
            problems.append(f"{name}: {layout['scrollWidth']} px wide in a {layout['innerWidth']} px window")
        problems += [f"{name}: {what!r} '{text}' is {h:.0f} px tall" for what, text, h in layout["small"]]
    assert problems == [], "\n".join(problems)


def test_kiosk_page_checks_in_and_comes_back_after_the_app_restarts(browser, tmp_path):
    """What appliance.kiosk relies on: a page opened with ?kiosk=1 checks in; while the web app is away it says
    so; once the app is back (a new process: it knows nothing of the page) the page reloads and checks in again."""
    from conftest import serve_in_thread
    from fake_engine import FakeEngine

    from appliance.jobs import Jobs
    from webui import create_app

    def start(port=0):
        data = tmp_path / "data"
        app = create_app({"DATA_DIR": str(data), "ENGINE": "cpu", "JOBS": Jobs(data, lambda r: FakeEngine())})
        return serve_in_thread(app, port)

    live, stop = start()
    page = browser.new_page()  # not the `page` fixture: the refused requests while the app is away are expected
    try:
        page.goto(live.url + "/?kiosk=1")
        page.wait_for_function("true")
        seen = live.app.extensions["backend"]
        deadline = time.monotonic() + 20
        while seen.kiosk_seen is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert seen.kiosk_seen is not None
        page.click("nav a[href='/history']")  # the kiosk flag stays with the tab, not with one URL
        page.wait_for_url("**/history")
        port = int(live.url.rsplit(":", 1)[1])
        stop()
        page.wait_for_selector("#reconnecting", state="visible", timeout=20_000)
        live, stop = start(port)
        page.wait_for_selector("#reconnecting", state="hidden", timeout=20_000)  # reloaded from the new app
        assert page.url.endswith("/history")
        deadline = time.monotonic() + 20
        while live.app.extensions["backend"].kiosk_seen is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert live.app.extensions["backend"].kiosk_seen is not None
    finally:
        page.close()
        stop()


def test_keyboard_reaches_copy_and_download_in_a_few_tabs(page, cpu_server, tmp_path):
    """Issue 14: a 3-page result took 268 Tab presses to reach Copy. Now: one Tab stop per page's boxes (arrow keys
    go from box to box) and a skip link to the text; the drop zone shows where the focus is."""
    import io

    from PIL import Image

    lines = [f"Line {n} of the page" for n in range(1, 13)]
    pages = [Image.open(io.BytesIO(text_image(lines, size=(900, 900)))).convert("RGB") for _ in range(3)]
    pdf = tmp_path / "three.pdf"
    pages[0].save(pdf, format="PDF", save_all=True, append_images=pages[1:], resolution=100)
    page.goto(cpu_server.url + "/")
    page.keyboard.press("Tab")
    for _ in range(30):  # to the file input inside the drop zone
        if page.evaluate("document.activeElement.id") == "file":
            break
        page.keyboard.press("Tab")
    outline = page.evaluate("getComputedStyle(document.querySelector('#drop')).outlineStyle")
    assert outline == "solid"
    page.set_input_files("#file", str(pdf))
    page.check("input[value=spotting]", force=True)
    page.click("#start")
    page.wait_for_selector("#out-text", timeout=180_000)
    assert page.locator("svg.overlay rect.box").count() >= 30
    presses = 0
    while page.evaluate("document.activeElement.dataset.copy || ''") != "out-text":
        page.keyboard.press("Tab")
        presses += 1
        assert presses <= 25, page.evaluate("document.activeElement.outerHTML.slice(0, 120)")
    first_box = page.locator("svg.overlay").first.locator("rect.box")
    first_box.first.focus()
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.dataset.text") == first_box.nth(1).get_attribute("data-text")


def test_a_file_over_the_upload_limit_is_refused_before_it_is_sent(browser, tmp_path):
    """Issue 14: an oversized body got the server's bare text/plain 413, a page with no way back in the kiosk."""
    from conftest import serve_in_thread
    from fake_engine import FakeEngine

    from appliance.jobs import Jobs
    from webui import create_app

    data = tmp_path / "data"
    config = {"DATA_DIR": str(data), "ENGINE": "cpu", "JOBS": Jobs(data, lambda r: FakeEngine())}
    live, stop = serve_in_thread(create_app({**config, "MAX_CONTENT_LENGTH": 3 * 2**20}))
    page = browser.new_page()
    try:
        big = tmp_path / "big.pdf"
        big.write_bytes(b"%PDF-1.4\n" + b"0" * (3 * 2**20))
        page.goto(live.url + "/")
        page.set_input_files("#file", str(big))
        assert page.locator("#too-big").is_visible() and "2 MB" in page.locator("#too-big").inner_text()
        assert page.locator("#chosen").is_hidden() and page.evaluate("document.querySelector('#file').value") == ""
        small = tmp_path / "small.png"
        small.write_bytes(text_image(["ok"]))
        page.set_input_files("#file", str(small))
        assert page.locator("#too-big").is_hidden() and page.locator("#chosen-name").inner_text() == "small.png"
    finally:
        page.close()
        stop()


def test_server_messages_are_said_in_chinese(browser, cpu_server, tmp_path):
    """Issue 14 item 9: with the UI in Chinese, an upload refused by the server, a job that failed while it ran and
    the status page's reason were English. Now each message keeps its id and values and is said in the UI's
    language (the API keeps its English `detail`)."""
    notes = tmp_path / "notes.png"  # a text file with an image's name: refused before it is queued
    notes.write_text("meeting notes, not a picture\n")
    broken = tmp_path / "broken.png"  # a good header, then the data stops: the job fails on its first page
    broken.write_bytes(text_image(["Cut short"], fmt="PNG")[:400])
    page = browser.new_page()  # not the `page` fixture: the refused upload's 415 is expected
    problems = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.goto(cpu_server.url + "/lang/zh?next=/")
    try:
        page.wait_for_selector("text=新建识别")
        page.set_input_files("#file", str(notes))
        page.check("input[value=text]", force=True)
        page.click("#start")
        refused = page.locator(".alert.error[role=alert]:not([hidden])").filter(has_text="notes.png")
        assert "不是图片或 PDF" in refused.inner_text() and "看起来是" in refused.inner_text()

        page.set_input_files("#file", str(broken))
        page.check("input[value=text]", force=True)
        page.click("#start")
        page.wait_for_url("**/job/*")
        page.wait_for_selector("#job-error", timeout=60_000)
        failed = page.locator("#job-error").inner_text()
        assert "broken.png：第 1 页：PNG 文件损坏或不完整" in failed, failed
        assert page.locator("#job-state").inner_text() == "失败"
        api = page.request.get(cpu_server.url + "/jobs/" + page.url.rsplit("/", 1)[1]).json()
        assert api["error"].startswith("broken.png: page 1: corrupt or truncated PNG")  # the API stays English
        assert api["error_code"] == "input" and api["error_params"]["reason"]["code"] == "page_reason"
        page.screenshot(path=SHOTS / "failed-zh.png", full_page=True)

        page.goto(cpu_server.url + "/status")
        assert page.locator("#engine-why").inner_text() == "由启动参数指定"  # was "chosen explicitly"
    finally:
        page.goto(cpu_server.url + "/lang/en?next=/")  # the browser is shared: the other tests read English
        page.close()
    assert problems == []


def test_scanner_page_scans_cancels_says_errors_in_chinese_then_one_job(page, cpu_server, sane):
    """SANE's virtual scanner through the scanner page: a flatbed page, a feeder stack cancelled after its first
    pages (kept), a paper jam said in Chinese, then the start page's task choice makes one job of every page."""
    # ~3 s a page at 150 dpi: the stack is still going when the test presses Cancel
    slow = {"read-limit": "true", "read-limit-size": "16384", "read-delay": "true", "read-delay-duration": "200000"}
    page.goto(cpu_server.url + "/scanner")
    page.wait_for_selector("#scanner-settings:not([hidden])", timeout=60_000)
    page.select_option("#scanner-device", "test:0")
    page.wait_for_function("() => document.querySelector('#scanner-source').options.length === 2")
    assert page.locator("#scanner-resolution").input_value() == "300"
    assert page.locator("#scanner-mode option:checked").inner_text() == "Grey (best for text)"
    page.select_option("#scanner-resolution", "150")
    page.click("#scanner-start")
    page.wait_for_selector("#scanner-pages li", timeout=60_000)
    assert page.locator("#scanner-pages-title").inner_text() == "3. Scanned pages: 1"
    scan_id = page.url.split("?scan=")[1]  # the page keeps its scan in the address: a reload keeps the pages

    sane(slow)
    page.select_option("#scanner-source", "Automatic Document Feeder")
    assert page.locator("#scanner-preview").is_hidden()  # a preview would use up a sheet of the stack
    page.click("#scanner-start")
    page.wait_for_selector("#scanner-cancel:not([hidden])")
    page.wait_for_function("() => document.querySelectorAll('#scanner-pages li').length >= 2", timeout=60_000)
    page.click("#scanner-cancel")
    page.wait_for_selector("#scanner-note:not([hidden])", timeout=30_000)
    assert "pages scanned before it are kept" in page.locator("#scanner-note").inner_text()
    kept = page.locator("#scanner-pages li").count()
    assert 2 <= kept < 11
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / "scanner.png", full_page=True)
    layout = page.evaluate(LAYOUT_JS, [TOUCH_TARGETS, TOUCH_PX])
    assert layout["small"] == [] and layout["scrollWidth"] <= layout["innerWidth"]

    sane({"read-status-code": '"SANE_STATUS_JAMMED"'})
    page.click("a[data-lang=zh]")  # the page reloads with ?scan=ID: its pages are still there
    try:
        page.wait_for_selector("#scanner-settings:not([hidden])", timeout=60_000)
        page.select_option("#scanner-device", "test:0")
        page.wait_for_function("() => document.querySelector('#scanner-source').options.length === 2")
        page.click("#scanner-start")
        page.wait_for_selector("#scanner-error:not([hidden])", timeout=30_000)
        assert "卡纸" in page.locator("#scanner-error").inner_text()
        assert page.locator("#scanner-pages li").count() == kept
        page.screenshot(path=SHOTS / "scanner-zh-jam.png", full_page=True)
    finally:
        page.goto(cpu_server.url + "/lang/en?next=/")  # the browser is shared: the other tests read English

    page.goto(cpu_server.url + "/")
    page.click("#scanner-open")
    page.wait_for_url("**/scanner**")
    page.goto(f"{cpu_server.url}/scanner?scan={scan_id}")
    page.wait_for_selector("#scanner-pages-step:not([hidden])", timeout=30_000)
    page.click("#scanner-use")
    page.wait_for_url(f"**/?scan={scan_id}")
    assert page.locator("#chosen-name").inner_text() == f"scanned pages ({kept})"
    page.check("input[value=text]", force=True)
    page.click("#start")
    page.wait_for_url("**/job/*")
    page.wait_for_selector("main[data-job][data-state=done]", timeout=120_000)
    assert re.fullmatch(r"scan-\d{8}-\d{6}\.tif", page.locator("h1.job-name").inner_text())
    job = cpu_server.jobs.get(page.url.rsplit("/", 1)[1])
    assert job.state == "done" and job.pages_total == kept


@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="the stick stand-in needs root (loop devices)")
def test_persistent_storage_offer_confirm_and_progress(page, stick, tmp_path):
    """Running from RAM on a raw-written stick: the warning offers it, the page says what it will and will not do,
    one button; the page follows the root unit's work by itself and ends with "restart"."""
    from conftest import serve_in_thread
    from fake_engine import FakeEngine

    from appliance import persistence
    from appliance.jobs import Jobs
    from webui import create_app

    s = stick()
    data, run = tmp_path / "data", tmp_path / "run"
    (tmp_path / "mounts").write_text(f"{s.disk}p1 /run/live/medium iso9660 ro 0 0\ntmpfs {data} tmpfs rw 0 0\n")
    state_file, request = run / "persistence.json", run / "requests" / "persistence"
    persistence.update(state_file, request, **s.where)  # the unit at boot
    engine = FakeEngine()
    jobs = Jobs(data, lambda report: engine)
    config = {"DATA_DIR": str(data), "ENGINE": "cpu", "JOBS": jobs, "MOUNTS_FILE": str(tmp_path / "mounts")}
    config.update(PERSISTENCE_STATE=str(state_file), PERSISTENCE_REQUEST=str(request))
    live, stop = serve_in_thread(create_app(config))
    try:
        assert jobs.wait_engine(10)["ready"]
        page.goto(live.url + "/")
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SHOTS / "persistence-home-en.png")
        page.click("#persistence-offer")
        page.wait_for_selector("#persist-confirm")
        offer = page.locator("#persist-offer").inner_text()
        assert "Make a new partition of 1016.0 MiB" in offer and "not encrypted" in offer
        page.screenshot(path=SHOTS / "persistence-offer-en.png", full_page=True)
        page.click("#persist-confirm")
        page.wait_for_selector("#persist-working")
        assert request.exists()
        persistence.update(state_file, request, **s.where)  # the root unit, started by its .path
        page.wait_for_selector("#persist-done", timeout=10_000)  # the page's script saw the state move on
        assert "Restart the appliance" in page.locator("#persist-done").inner_text()
        page.screenshot(path=SHOTS / "persistence-done-en.png")
        page.goto(live.url + "/")
        assert page.locator("#persistence-ready").count() == 1 and page.locator("#persistence-offer").count() == 0
    finally:
        stop()
        jobs.close(timeout=5)
