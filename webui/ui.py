"""The kiosk's pages: upload (file, USB media or a scanner), progress, result with boxes, history, status, language,
LAN login.

Form posts carry a CSRF token; progress polling and cancel go to the API (`webui.api`), the same one programs use.
"""

from __future__ import annotations

import importlib.metadata
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from flask import Blueprint, abort, current_app, flash, jsonify, redirect, render_template, request, url_for

from appliance import __version__, export, persistence, storage
from appliance.messages import Text
from appliance.ocr import images
from appliance.ocr.tasks import EXTRACT_PRESETS, LANGUAGES, Request, Task
from webui import errors, i18n, render, security, usb
from webui.services import backend, jobs, runtime_config, scan_state, scans, submit, submit_scan

bp = Blueprint("ui", __name__)


@dataclass(frozen=True)
class TaskChoice:
    task: Task
    icon: str  # a symbol in templates/_icons.html


# The order the home page offers them in: the everyday ones first.
TASKS = [
    TaskChoice(Task.SPOTTING, "boxes"),
    TaskChoice(Task.TEXT, "text"),
    TaskChoice(Task.DOC, "doc"),
    TaskChoice(Task.TABLE, "table"),
    TaskChoice(Task.EXTRACT, "fields"),
    TaskChoice(Task.TRANSLATE, "translate"),
    TaskChoice(Task.FORMULA, "formula"),
    TaskChoice(Task.CHART, "chart"),
    TaskChoice(Task.SUBTITLES, "subtitles"),
]

PACKAGES = ("flask", "waitress", "rapidocr", "onnxruntime", "torch", "transformers", "vllm", "pypdfium2", "pillow")


@bp.before_request
def guard():
    if request.endpoint in ("ui.login", "ui.set_language"):
        return None
    if not security.trusted():
        return redirect(url_for("ui.login", next=request.full_path))
    if request.method == "POST":
        security.check_csrf()
    return None


@bp.errorhandler(Exception)
def handle(exc):
    status, error, detail, headers = errors.describe(exc, current_app.config.get("MAX_CONTENT_LENGTH"))
    if status == 500:
        current_app.logger.error("page failed", exc_info=exc)
    page = render_template("error.html", status=status, error=i18n.say_error(error), detail=i18n.say(detail))
    return page, status, headers


BANNER_TTL = 30  # seconds a computed GPU banner is reused (it may run nvidia-smi)


@bp.app_context_processor
def gpu_banner() -> dict:
    """Every page of a gpu image: one sentence saying why OCR runs on the CPU (appliance.gpu.banner), or nothing."""
    cache = current_app.extensions.setdefault("gpu_banner", {"at": 0.0, "reason": None})
    if time.monotonic() - cache["at"] > BANNER_TTL:
        from appliance import gpu
        from appliance.model_dir import IMAGE_MODEL_DIR

        config = current_app.config
        stack = gpu.load_stack_info(config["GPU_STACK_FILE"])
        model_dir = backend().model_dir or IMAGE_MODEL_DIR
        cache["reason"] = gpu.banner(config["SYSFS"], stack, model_dir) if stack else None
        cache["at"] = time.monotonic()
    return {"gpu_banner": i18n.say_reason(cache["reason"]) if cache["reason"] else None}


def model_license() -> dict[str, str]:
    """{"LICENSE": text, "NOTICE": text} of the bundled weights (gpu images), for the status page."""
    folder = Path(current_app.config["MODEL_LICENSE_DIR"])
    texts = {}
    for name in ("LICENSE", "NOTICE"):
        try:
            texts[name] = (folder / name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            pass
    return texts


def one_sentence(text: str | None, limit: int = 240) -> str:
    """An engine's error for a person: its first line, cut to a readable length (the log keeps the whole)."""
    line = next((part.strip() for part in (text or "").splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def engine_notes(engine: dict) -> dict:
    """What the pages say about the engine beyond its state: the failure in one sentence, the tasks that still work
    when some engine runs anyway, and the fallback (a GPU engine was chosen but the CPU engine is what runs)."""
    choice = backend().engine_choice
    info = engine.get("info") or {}
    labels = ", ".join(i18n.gettext(f"task_{t}") for t in engine.get("tasks") or [])
    fallback = engine.get("fallback") or (
        choice.engine.startswith("hunyuan") and info.get("name") == "cpu" and (engine.get("error") or choice.reason)
    )
    reason = one_sentence(i18n.say(engine.get("error"))) or engine.get("state", "")
    return {
        "reason": reason if reason.endswith((".", "!", "?", "。", "…")) else reason + ".",
        "running": info.get("name"),
        "working_tasks": labels,
        "fallback": one_sentence(i18n.say(fallback)) if isinstance(fallback, str) else None,
        "wanted": choice.engine,
    }


def limits() -> dict:
    """The queue's fair-turn limits, for the sentence that says them (home and status pages)."""
    return {"max_pages": jobs().max_pages, "turn_minutes": max(1, round(jobs().turn_seconds / 60))}


def _home(**context):
    engine = jobs().engine_status()
    supported = set(engine["tasks"] or [t.value for t in Task])  # no engine (yet): offer all; the job says if not
    return render_template(
        "home.html",
        tasks=TASKS,
        supported=supported,
        presets=EXTRACT_PRESETS,
        languages=LANGUAGES,
        engine=engine,
        notes=engine_notes(engine),
        in_ram=data_storage().in_ram,
        persistence=persistence_view(),
        elapsed=max(0, int(time.time() - (engine.get("since") or time.time()))),
        form=request.form,
        scan=_chosen_scan(),
        default_task=runtime_config().default_task,
        **limits(),
        **context,
    )


def _chosen_scan() -> dict | None:
    """The scan the scanner page sent here (?scan=ID, or the form's scan_id after an error), if it has pages."""
    scan_id = request.values.get("scan") or request.form.get("scan_id")
    try:
        scan = scans().get(scan_id) if scan_id else None
    except LookupError:
        return None
    return scan.to_dict() if scan and scan.to_dict()["pages"] else None


@bp.get("/")
def home():
    return _home()


@bp.get("/scanner")
def scanner():
    """Scan pages from a USB or network scanner; the page drives the API's /scanners routes, then hands the scan to
    the start page (?scan=ID) for the task choice."""
    return render_template("scanner.html", scan_id=request.args.get("scan", ""))


@bp.post("/upload")
def upload():
    """One form, three sources: a file picked or dropped in the browser, a file on the USB media (`usb_path`), or
    the pages of a scan from the scanner page (`scan_id`)."""
    form = request.form
    try:
        req = Request.make(
            form.get("task") or runtime_config().default_task,
            fields=form.get("fields"),
            target_lang=form.get("target_lang"),
        )
        upload_file = request.files.get("file")
        if form.get("scan_id") and not (upload_file and upload_file.filename):
            job = submit_scan(form["scan_id"], req)
            return redirect(url_for("ui.job", job_id=job.id), code=303)
        if upload_file and upload_file.filename:
            data, name = upload_file.read(), upload_file.filename
        elif form.get("usb_path"):
            path = usb.resolve(current_app.config["USB_ROOT"], form["usb_path"])
            if not path.is_file():
                raise errors.BadRequest(Text("usb_not_a_file", path=form["usb_path"]))
            images.check_size(path.stat().st_size, path.name)  # a stick's file is no upload: the files' own limit
            # Read now: the stick may be pulled while the job waits, and the job keeps its own copy anyway.
            data, name = path.read_bytes(), path.name
        else:
            raise errors.BadRequest(i18n.gettext("choose_file_first"))
        job = submit(data, name, req)
    except Exception as exc:
        status, _error, detail, headers = errors.describe(exc, current_app.config.get("MAX_CONTENT_LENGTH"))
        if status == 500:
            raise
        return _home(error=i18n.say(detail)), status, headers
    return redirect(url_for("ui.job", job_id=job.id), code=303)


@bp.get("/job/<job_id>")
def job(job_id):
    job = jobs().get(job_id)
    result = jobs().result(job_id) if job.has_result else None
    markdown = render.markdown_html(result.markdown) if result else ""
    return render_template(
        "job.html",
        job=job,
        result=result,
        markdown=markdown,
        position=jobs().position(job_id),
        cancelling=jobs().cancelling(job_id),
        formats=runtime_config().outputs,  # the image's configured download formats
    )


@bp.post("/job/<job_id>/cancel")
def cancel(job_id):
    jobs().cancel(job_id)
    return redirect(url_for("ui.job", job_id=job_id), code=303)


@bp.post("/job/<job_id>/delete")
def delete(job_id):
    jobs().delete(job_id)
    return redirect(url_for("ui.history"), code=303)


@bp.post("/job/<job_id>/save-usb")
def save_to_usb(job_id):
    """Write the configured outputs (txt, md, json, the searchable PDF) into a folder on the stick, never over an
    existing file."""
    folder_rel = request.form.get("folder", "")
    folder = usb.resolve(current_app.config["USB_ROOT"], folder_rel)
    if not folder.is_dir() or folder == Path(current_app.config["USB_ROOT"]).resolve():
        raise errors.BadRequest(f"'{folder_rel}' is not a folder on a USB stick")
    job = jobs().get(job_id)
    try:
        formats = runtime_config().outputs
        stem = export.free_stem(folder, Path(job.name).stem or "result", formats)
        written = export.write_outputs(jobs().result(job_id), jobs().input_path(job_id), folder, stem, formats)
    except OSError as exc:
        flash(i18n.gettext("save_failed", folder="/" + folder_rel, error=exc.strerror or exc), "error")
    else:
        flash(i18n.gettext("saved_to", folder="/" + folder_rel, files=", ".join(p.name for p in written)), "info")
    return redirect(url_for("ui.job", job_id=job_id), code=303)


@bp.get("/history")
def history():
    return render_template("history.html", jobs=jobs().list(limit=200), counts=jobs().counts())


def data_storage() -> storage.Storage:
    config = current_app.config
    return storage.storage(config["DATA_DIR"], config["MOUNTS_FILE"], Path(config["MEDIUM_MARKER"]))


REQUEST_PICKUP = 30  # seconds the root unit may take to pick a request up before the page says it did not
RUNNING_AT_MOST = 900  # seconds one step may take (mkfs on a big, slow stick) before the page stops waiting


def persistence_view() -> dict | None:
    """Persistent storage on the boot stick as the pages show it, from the state the root unit wrote
    (appliance.persistence.update); None where there is none (not running from the appliance's image)."""
    config = current_app.config
    state = persistence.read_state(Path(config["PERSISTENCE_STATE"]))
    if state is None:
        return None
    status, job = state["status"], state.get("job") or {}
    try:
        age = time.time() - Path(config["PERSISTENCE_REQUEST"]).stat().st_mtime
    except OSError:
        age = None
    pending = age is not None and age < REQUEST_PICKUP
    # A unit that died mid-way (killed; /run is gone after a power cut anyway) must not keep the page waiting.
    running = job.get("state") == "running" and time.time() - state.get("updated", 0) < RUNNING_AT_MOST
    view = {
        "state": status.get("state"),
        # Only while the data is in RAM: where /srv/ocr is already on a disk, a second persistence would only confuse.
        "offered": status.get("state") in persistence.OFFERED and not (pending or running) and data_storage().in_ram,
        "working": pending or running,
        "stuck": age is not None and not pending,  # asked, and nobody took the request
        "step": i18n.gettext("persist_step_" + job["step"]) if running and job.get("step") else "",
        "job": job.get("state"),
        "text": _said(status),
        "job_text": _said(job) if job.get("state") in ("failed", "refused") else "",
        "size": status.get("size", 0),
        "disk": status.get("disk") or "",
        "description": status.get("description") or "",
        "disk_size": status.get("disk_size", 0),
    }
    view["signature"] = f"{view['working']}:{view['state']}:{view['job']}:{job.get('step', '')}"
    return view


def _said(part: dict) -> str:
    """A stored message (its id and values) in the page's language; its English words if this version lacks the id."""
    text = Text.from_dict(part["message"]) if isinstance(part.get("message"), dict) else None
    return i18n.say(text) if text is not None else str(part.get("text", ""))


@bp.get("/persistence")
def persistence_page():
    """Persistent storage on the boot stick: what it does and does not touch, one button; then its progress."""
    return render_template("persistence.html", view=persistence_view(), in_ram=data_storage().in_ram)


@bp.post("/persistence")
def persistence_create():
    """The confirmation: ask the root unit (appliance-persistence.path) to create it. The unit checks everything
    again itself; this only saves a request that could not be granted."""
    view = persistence_view()
    if not view or not view["offered"]:
        flash(view["text"] if view else i18n.gettext("persist_none"), "error")
    else:
        try:
            persistence.request(Path(current_app.config["PERSISTENCE_REQUEST"]))
        except OSError as exc:
            flash(i18n.gettext("persist_request_failed", error=exc.strerror or exc), "error")
    return redirect(url_for("ui.persistence_page"), code=303)


@bp.get("/persistence/state")
def persistence_state():
    """For the page's script: it reloads the page when this changes."""
    view = persistence_view()
    return jsonify({"signature": view["signature"] if view else None, "working": bool(view and view["working"])})


@bp.get("/status")
def status():
    data_dir = current_app.config["DATA_DIR"]
    engine = jobs().engine_status()
    versions = {"appliance": __version__, "python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return render_template(
        "status.html",
        choice=backend().engine_choice,
        engine=engine,
        notes=engine_notes(engine),
        versions=versions,
        data_dir=data_dir,
        disk=data_storage(),
        persistence=persistence_view(),
        counts=jobs().counts(),
        max_queue=jobs().max_queue,
        **limits(),
        model_dir=backend().model_dir,
        lan=bool(current_app.config["LAN_TOKEN"]),
        license=model_license(),
    )


@bp.get("/scan-folder")
def scan_folder():
    """The scan folder's queue; the page polls GET /scan (the same data) to stay current without reloading."""
    tasks = {t.value: i18n.gettext(f"task_{t.value}") for t in Task}
    return render_template("scan.html", scan=scan_state(), tasks=tasks)


@bp.post("/scan-folder/retry")
def scan_retry():
    """Failed files back into their inbox folder (a USB stick's into its OCR-INBOX): all of them, or the one whose
    ledger id is posted as `id`. Files of a stick that is not inserted stay failed, and the message names them."""
    from appliance import scan

    root = current_app.config["SCAN_DIR"]
    if not root:
        raise errors.BadRequest(i18n.gettext("scan_off"))
    ids = [int(i) for i in request.form.getlist("id") if i.isdigit()] or None
    retried = scan.retry_failed(root, ids=ids)
    if retried.moved or not retried.waiting:
        flash(i18n.gettext("scan_retried", n=retried.moved), "info")
    if retried.waiting:
        flash(i18n.gettext("scan_retry_waiting", files=retried.waiting_text()), "error")
    return redirect(url_for("ui.scan_folder"), code=303)


@bp.get("/usb/list")
def usb_list():
    try:
        return jsonify(usb.listing(current_app.config["USB_ROOT"], request.args.get("path", "")))
    except errors.BadRequest as exc:
        return jsonify({"error": "bad request", "detail": str(exc)}), 400


@bp.get("/lang/<code>")
def set_language(code):
    if code not in i18n.LANGS:
        abort(404)
    target = request.args.get("next") or url_for("ui.home")
    if urlsplit(target).netloc or not target.startswith("/"):  # only back into this app
        target = url_for("ui.home")
    response = redirect(target, code=303)
    response.set_cookie(i18n.COOKIE, code, max_age=10 * 365 * 86400, samesite="Strict", httponly=True)
    return response


@bp.route("/login", methods=["GET", "POST"])
def login():
    """LAN mode only: a browser on another machine enters the token once; the session remembers it."""
    target = request.values.get("next") or url_for("ui.home")
    if not target.startswith("/") or urlsplit(target).netloc:
        target = url_for("ui.home")
    if request.method == "POST":
        security.check_csrf()
        limiter = current_app.extensions.setdefault("login_limiter", security.LoginLimiter())
        address = request.remote_addr or ""
        wait = limiter.retry_after(address)
        if wait:
            page = render_template("login.html", next=target, failed=True, wait=wait)
            return page, 429, {"Retry-After": str(wait)}
        if security.token_ok(request.form.get("token", "")):
            security.log_in()
            return redirect(target, code=303)
        limiter.failed(address)
        return render_template("login.html", next=target, failed=True), 401
    return render_template("login.html", next=target, failed=False)


@bp.app_template_filter("datetime")
def format_time(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch)) if epoch else ""
