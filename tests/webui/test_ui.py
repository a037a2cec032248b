"""The kiosk pages with Flask's test client: upload (file and USB), result with boxes, history, status, language,
CSRF, LAN login, and that nothing is loaded from outside the appliance."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest
from conftest import csrf, image_bytes

WEBUI = Path(__file__).resolve().parents[2] / "webui"


def upload(client, data: dict, token: str | None = None):
    return client.post(
        "/upload", data={"csrf_token": token or csrf(client), **data}, content_type="multipart/form-data"
    )


def test_home_offers_tasks_presets_and_usb(client):
    html = client.get("/", headers={"Accept-Language": "en"}).get_data(as_text=True)
    for text in (
        "Text with positions",
        "Extract fields",
        "Translate",
        "Browse USB stick",
        "ID card",
        "VAT invoice",
        "Receipt",
        'name="target_lang"',
        'data-fields="姓名,性别',
    ):
        assert text in html


def test_language_from_browser_then_cookie(client):
    assert "新建识别" in client.get("/", headers={"Accept-Language": "zh-CN,zh;q=0.9"}).get_data(as_text=True)
    response = client.get("/lang/zh?next=/history")
    assert response.status_code == 303 and response.headers["Location"] == "/history"
    assert "lang=zh" in response.headers["Set-Cookie"]
    html = client.get("/history", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert "历史记录" in html and 'lang="zh-CN"' in html
    client.get("/lang/en")
    assert "History" in client.get("/history").get_data(as_text=True)
    assert client.get("/lang/en?next=https://evil.example/").headers["Location"] == "/"
    assert client.get("/lang/fr").status_code == 404


def test_upload_shows_result_with_boxes_and_downloads(client, engine):
    response = upload(client, {"file": (io.BytesIO(image_bytes()), "scan.png"), "task": "spotting"})
    assert response.status_code == 303
    job_url = response.headers["Location"]
    job_id = job_url.rsplit("/", 1)[1]
    client.application.extensions["backend"].jobs.wait(job_id, 10)
    html = client.get(job_url, headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert '<pre id="out-text" class="out">HELLO 120x60</pre>' in html
    assert re.search(r'<rect class="box" x="2" y="3" width="58" height="27" data-text="HELLO 120x60"', html)
    assert 'viewBox="0 0 120 60"' in html and f"/jobs/{job_id}/pages/1" in html
    for fmt in ("txt", "json", "pdf"):
        assert f"/jobs/{job_id}/result?format={fmt}&amp;download=1" in html
    assert "format=md&amp;download=1" not in html  # spotting makes no Markdown: a .md would repeat the .txt


def test_result_tabs_for_markdown_fields_translation(client):
    doc = upload(client, {"file": (io.BytesIO(image_bytes()), "d.png"), "task": "doc"}).headers["Location"]
    extract = upload(
        client, {"file": (io.BytesIO(image_bytes()), "e.png"), "task": "extract", "fields": "name,date"}
    ).headers["Location"]
    translate = upload(
        client, {"file": (io.BytesIO(image_bytes()), "t.png"), "task": "translate", "target_lang": "ja"}
    ).headers["Location"]
    jobs = client.application.extensions["backend"].jobs
    for url in (doc, extract, translate):
        jobs.wait(url.rsplit("/", 1)[1], 10)
    html = client.get(doc).get_data(as_text=True)
    assert "<h1>Title</h1>" in html and "<table><tr><td>a</td><td>b</td></tr></table>" in html
    assert "<th>date</th><td>value of date</td>" in client.get(extract).get_data(as_text=True)
    assert "[ja] HELLO 120x60" in client.get(translate).get_data(as_text=True)


def test_markdown_from_a_document_cannot_inject_markup():
    from webui.render import markdown_html

    html = markdown_html(
        '# T\n\n<script>alert(1)</script><img src=x onerror=alert(1)><td onclick="x" colspan="2">'
        "c</td>\n\n[link](javascript:alert(1))"
    )
    assert "<script" not in html and "alert(1)</" not in html and "<img" not in html and "onclick" not in html
    assert '<td colspan="2">c</td>' in html and "<a" not in html


def test_formulas_are_kept_whole_for_katex():
    """LaTeX goes to the page untouched by Markdown (backslashes, _ and * intact), marked for the script; code,
    escaped dollars and money stay text; the TeX cannot break out of its element."""
    from webui.render import markdown_html

    html = markdown_html(
        "Sum $a_1 * b_1 * c$ and \\(x_1\\), costs $5 and $6, \\$x\\$, `$code$`\n\n"
        "$$\n\\begin{aligned} a &= b \\\\\n- c &= d \\end{aligned}\n$$\n\n"
        "| q | f |\n|---|---|\n| abs | $|x|$ |\n\n<table><tr><td>\\[y^2\\]</td></tr></table>\n\n"
        '$"><script>x</script>$'
    )
    assert '<span class="math" data-tex="a_1 * b_1 * c">$a_1 * b_1 * c$</span>' in html
    assert '<span class="math" data-tex="x_1">\\(x_1\\)</span>' in html
    assert "costs $5 and $6, $x$, <code>$code$</code>" in html
    display = '<span class="math display" data-tex="\\begin{aligned} a &amp;= b \\\\\n- c &amp;= d \\end{aligned}">'
    assert display in html  # whole, across lines, "- c" not made a list item
    assert '<td><span class="math" data-tex="|x|">$|x|$</span></td>' in html  # | inside $...$ is not a cell border
    assert '<td><span class="math display" data-tex="y^2">\\[y^2\\]</span></td>' in html
    assert '<span class="math" data-tex="&quot;&gt;&lt;script&gt;x&lt;/script&gt;">$"&gt;&lt;script&gt;' in html
    assert "<script" not in html


def test_unclosed_formula_delimiters_cost_one_scan():
    """A model stuck repeating "\\(" must not stall the result page (a rescan per opener took 20 s here)."""
    import time

    from webui.render import markdown_html

    start = time.monotonic()
    html = markdown_html("\\( a \\[ b " * 10000)
    assert time.monotonic() - start < 5 and 'class="math' not in html


def test_csp_lets_in_style_attributes_only():
    """KaTeX needs style attributes; scripts, <style> elements and stylesheets stay this origin's only."""
    from webui.security import CSP

    directives = dict(d.strip().split(" ", 1) for d in CSP.split(";"))
    assert directives["default-src"] == directives["style-src"] == "'self'"
    assert directives["style-src-attr"] == "'unsafe-inline'" and "script-src" not in directives
    assert CSP.count("unsafe") == 1


def test_upload_needs_the_csrf_token(client):
    response = client.post(
        "/upload", data={"file": (io.BytesIO(image_bytes()), "a.png")}, content_type="multipart/form-data"
    )
    assert response.status_code == 400 and "expired" in response.get_data(as_text=True)
    assert client.application.extensions["backend"].jobs.list() == []


def test_upload_errors_are_shown_on_the_form(client):
    token = csrf(client)
    nothing = upload(client, {"task": "text"}, token)
    assert nothing.status_code == 400 and "Choose a file first" in nothing.get_data(as_text=True)
    text = upload(client, {"file": (io.BytesIO(b"just words"), "notes.txt")}, token)
    assert text.status_code == 415 and "notes.txt is not an image or PDF" in text.get_data(as_text=True)
    broken = upload(client, {"file": (io.BytesIO(image_bytes()[:30]), "cut.png")}, token)
    assert broken.status_code == 422 and "cut.png" in broken.get_data(as_text=True)
    no_fields = upload(client, {"file": (io.BytesIO(image_bytes()), "a.png"), "task": "extract"}, token)
    body = no_fields.get_data(as_text=True)
    assert no_fields.status_code == 400 and "needs field names" in body
    assert re.search(r'value="extract" checked', body)  # the user's choice is kept


@pytest.fixture
def usb_stick(app_config):
    root = Path(app_config["USB_ROOT"])
    stick = root / "KINGSTON"
    (stick / "scans").mkdir(parents=True)
    (stick / "scans" / "invoice.png").write_bytes(image_bytes(size=(200, 100)))
    (stick / "notes.txt").write_text("not offered")
    (stick / ".hidden.png").write_bytes(image_bytes())
    (stick / "photo.JPG").write_bytes(image_bytes("JPEG"))
    os.symlink("/etc/passwd", stick / "escape.png")
    return root


def test_usb_browser_lists_only_images_and_pdfs_inside_the_media_folder(client, usb_stick):
    top = client.get("/usb/list").get_json()
    assert top["path"] == "" and top["parent"] is None and [e["name"] for e in top["entries"]] == ["KINGSTON"]
    stick = client.get("/usb/list?path=KINGSTON").get_json()
    assert [(e["name"], e["type"]) for e in stick["entries"]] == [("scans", "dir"), ("photo.JPG", "file")]
    assert stick["parent"] == ""
    scans = client.get("/usb/list?path=KINGSTON/scans").get_json()
    assert scans["parent"] == "KINGSTON" and scans["entries"][0]["path"] == "KINGSTON/scans/invoice.png"
    for bad in ("../", "KINGSTON/../../etc", "/etc", "KINGSTON/escape.png", "GONE"):
        assert client.get(f"/usb/list?path={bad}").status_code == 400, bad


def test_upload_from_usb_stick(client, usb_stick):
    response = upload(client, {"usb_path": "KINGSTON/scans/invoice.png", "task": "text"})
    assert response.status_code == 303
    job = client.application.extensions["backend"].jobs.wait(response.headers["Location"].rsplit("/", 1)[1], 10)
    assert (job.name, job.state) == ("invoice.png", "done")
    assert upload(client, {"usb_path": "KINGSTON/escape.png"}).status_code == 400
    assert upload(client, {"usb_path": "../data/secret_key"}).status_code == 400


def test_usb_browser_without_media(client, app):
    app.config["USB_ROOT"] = "/nonexistent/media"
    assert client.get("/usb/list").get_json()["missing"] is True


def test_history_reopen_and_delete(client):
    location = upload(client, {"file": (io.BytesIO(image_bytes()), "old.png")}).headers["Location"]
    job_id = location.rsplit("/", 1)[1]
    client.application.extensions["backend"].jobs.wait(job_id, 10)
    html = client.get("/history").get_data(as_text=True)
    assert "old.png" in html and f'href="/job/{job_id}"' in html
    response = client.post(f"/job/{job_id}/delete", data={"csrf_token": csrf(client)})
    assert response.status_code == 303 and response.headers["Location"] == "/history"
    assert "old.png" not in client.get("/history").get_data(as_text=True)
    assert client.get(location).status_code == 404


def test_job_page_while_waiting_and_cancel(client, engine):
    import threading

    engine.gate = threading.Event()
    first = upload(client, {"file": (io.BytesIO(image_bytes(color="red")), "a.png")}).headers["Location"]
    assert engine.started.wait(10)
    second = upload(client, {"file": (io.BytesIO(image_bytes(color="blue")), "b.png")}).headers["Location"]
    html = client.get(second, headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert 'data-state="queued"' in html and "Place in queue: 1" in html and 'id="cancel"' in html
    client.post(second + "/cancel", data={"csrf_token": csrf(client)})
    assert "Cancelled" in client.get(second, headers={"Accept-Language": "en"}).get_data(as_text=True)
    engine.gate.set()
    client.application.extensions["backend"].jobs.wait(first.rsplit("/", 1)[1], 10)


def test_status_page(client, app):
    html = client.get("/status", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert '<dd id="engine-name">fake</dd>' in html and "chosen explicitly" in html
    assert app.config["DATA_DIR"] in html and "free of" in html and "flask" in html
    assert "test/fake" in html and "r1" in html


@pytest.mark.parametrize("app_config", [{"LAN_TOKEN": "s3cret", "USB_ROOT": "/media"}])
def test_lan_browser_logs_in_with_the_token(client):
    lan = {"REMOTE_ADDR": "10.0.0.5"}
    response = client.get("/history", environ_base=lan)
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    token = csrf(client, "/login")
    bad = client.post("/login", data={"csrf_token": token, "token": "guess"}, environ_base=lan)
    assert bad.status_code == 401
    good = client.post("/login", data={"csrf_token": token, "token": "s3cret", "next": "/history"}, environ_base=lan)
    assert good.status_code == 303 and good.headers["Location"] == "/history"
    assert client.get("/history", environ_base=lan).status_code == 200
    assert client.get("/jobs", environ_base=lan).status_code == 200  # the pages' own API calls ride the session


def test_pages_load_nothing_from_outside(client):
    """Offline kiosk: no CDN, no web fonts; every src/href is this app's own."""
    pages = ["/", "/history", "/status", "/login"]
    for path in pages:
        html = client.get(path).get_data(as_text=True)
        for ref in re.findall(r'(?:src|href|action)="([^"]*)"', html):
            assert ref.startswith(("/", "#")), (path, ref)
        assert "<script>" not in html and " style=" not in html  # CSP forbids inline script and style
    for asset in (WEBUI / "static").rglob("*"):
        if asset.suffix in (".js", ".css", ".svg"):  # KaTeX's MathML/SVG namespace names are not fetched
            text = re.sub(r"http://www\.w3\.org/(1998/Math/MathML|2000/svg)", "", asset.read_text())
            assert not re.search(r"https?://|//fonts\.|@import", text), asset
    katex = WEBUI / "static" / "vendor" / "katex"
    fonts = re.findall(r"url\((fonts/[^)]+\.woff2)\)", (katex / "katex.min.css").read_text())  # the source used
    assert fonts and all((katex / font).is_file() for font in fonts)
    for template in (WEBUI / "templates").iterdir():
        assert not re.search(r"https?://", template.read_text().replace("http://www.w3.org/2000/svg", "")), template


def test_static_assets_are_served(client):
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/app.css").mimetype == "text/css"


def test_save_to_usb_writes_every_format_without_overwriting(client, usb_stick):
    location = upload(client, {"file": (io.BytesIO(image_bytes()), "scan.png")}).headers["Location"]
    job_id = location.rsplit("/", 1)[1]
    client.application.extensions["backend"].jobs.wait(job_id, 10)
    token = csrf(client)
    for _ in range(2):
        response = client.post(f"/job/{job_id}/save-usb", data={"csrf_token": token, "folder": "KINGSTON/scans"})
        assert response.status_code == 303 and response.headers["Location"] == location
    folder = usb_stick / "KINGSTON" / "scans"
    assert sorted(p.name for p in folder.glob("scan*")) == [
        "scan-1.json",
        "scan-1.md",
        "scan-1.pdf",
        "scan-1.txt",
        "scan.json",
        "scan.md",
        "scan.pdf",
        "scan.txt",
    ]
    assert (folder / "scan.txt").read_text() == "HELLO 120x60\n"
    html = client.get(location, headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert "Saved to /KINGSTON/scans: scan-1.pdf, scan-1.md, scan-1.txt, scan-1.json" in html
    for bad in ("", "../data", "KINGSTON/escape.png", "KINGSTON/photo.JPG"):
        assert client.post(f"/job/{job_id}/save-usb", data={"csrf_token": token, "folder": bad}).status_code == 400


@pytest.mark.parametrize("app_config", [{"LAN_TOKEN": "s3cret", "USB_ROOT": "/media"}])
def test_lan_session_is_same_site_only_and_ends_when_the_token_changes(client, app):
    lan = {"REMOTE_ADDR": "10.0.0.5"}
    token = csrf(client, "/login")
    good = client.post("/login", data={"csrf_token": token, "token": "s3cret"}, environ_base=lan)
    assert "SameSite=Strict" in good.headers["Set-Cookie"] and "HttpOnly" in good.headers["Set-Cookie"]
    assert client.get("/jobs", environ_base=lan).status_code == 200
    app.config["LAN_TOKEN"] = "n3w-token"  # a restart with another --lan-token: old logins must not count
    assert client.get("/jobs", environ_base=lan).status_code == 401
    assert client.get("/history", environ_base=lan).status_code == 302


@pytest.mark.parametrize("app_config", [{"LAN_TOKEN": "s3cret", "USB_ROOT": "/media"}])
def test_login_guessing_is_slowed_down(client):
    lan = {"REMOTE_ADDR": "10.0.0.6"}
    token = csrf(client, "/login")
    for _ in range(10):
        assert (
            client.post("/login", data={"csrf_token": token, "token": "guess"}, environ_base=lan).status_code == 401
        )
    blocked = client.post("/login", data={"csrf_token": token, "token": "s3cret"}, environ_base=lan)
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0  # even the right token waits
    other = client.post(
        "/login", data={"csrf_token": token, "token": "s3cret"}, environ_base={"REMOTE_ADDR": "10.0.0.7"}
    )
    assert other.status_code == 303  # another machine is not locked out


def test_a_non_ascii_csrf_token_is_a_400_not_a_crash(client):
    csrf(client, "/")
    response = client.post("/job/x/cancel", data={"csrf_token": "令牌"})
    assert response.status_code == 400


def test_an_empty_file_says_so_in_the_ui_as_in_the_api(client):
    token = csrf(client, "/")
    page = client.post(
        "/upload", data={"csrf_token": token, "task": "text", "file": (io.BytesIO(b""), "empty.png")}
    ).get_data(as_text=True)
    assert "the file is empty" in page and "unrecognised" not in page


def test_a_form_of_too_many_parts_is_not_called_a_large_file(client):
    token = csrf(client, "/")
    fields = {f"x{n}": "1" for n in range(3000)}
    data = {"csrf_token": token, "task": "text", "file": (io.BytesIO(b"x"), "a.png"), **fields}  # multipart
    response = client.post("/upload", data=data)
    assert response.status_code == 413 and "too many fields" in response.get_data(as_text=True)
    assert "file too large" not in response.get_data(as_text=True)


def test_a_too_large_picture_is_not_told_to_be_scanned_again(client):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (12000, 10000), 1).save(buf, format="PNG")  # 120 MP: over the pixel limit, a few KB
    response = client.post("/ocr", data={"file": (io.BytesIO(buf.getvalue()), "huge.png"), "task": "text"})
    detail = response.get_json()["detail"]
    assert response.status_code == 422 and "the limit is" in detail
    assert "scan it again" not in detail and "lower resolution" in detail
