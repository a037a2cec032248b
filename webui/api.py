"""The HTTP API for programs: the reference articles' POST /ocr, async jobs, health, and the OpenAPI document.

Errors are JSON `{"error": ..., "detail": ...}` with the status from `webui.errors` (the pages use the same).
"""

from __future__ import annotations

import base64
import binascii
import io
import time

from flask import Blueprint, Response, current_app, jsonify, request, url_for

from appliance import export
from appliance.jobs import DONE, FAILED
from appliance.messages import Text
from appliance.ocr.tasks import Request
from appliance.scanner import find_scanners, read_choices
from webui import errors, i18n, render, security
from webui.openapi import document as openapi_document
from webui.services import (
    backend,
    job_json,
    jobs,
    runtime_config,
    scan_json,
    scan_state,
    scanner_device,
    scans,
    submit,
    submit_scan,
)

bp = Blueprint("api", __name__)


@bp.before_request
def require_token():
    if not security.trusted():
        return error_response(
            401,
            "token required",
            "LAN access needs the header 'Authorization: Bearer <token>'",
            {"WWW-Authenticate": 'Bearer realm="ocr"'},
        )


@bp.errorhandler(Exception)
def handle(exc):
    status, error, detail, headers = errors.describe(exc, current_app.config.get("MAX_CONTENT_LENGTH"))
    if status == 500:
        current_app.logger.error("API request failed", exc_info=exc)
    return error_response(status, error, detail, headers)


def error_response(status: int, error: str, detail: str, headers: dict | None = None):
    """`error`: the stable code; `detail`: English words; `message`: their appliance.messages id and values, when
    they have one (a UI says them in its own language), and `text`: those words in the UI language."""
    body = {"error": error, "detail": str(detail)}
    if isinstance(detail, Text):
        body["message"] = detail.to_dict()
        body["text"] = i18n.say(detail)  # the words in the caller's UI language (the kiosk's pages show these)
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def accepted(body: dict, location: str):
    """202: the work goes on; poll `location`."""
    response = jsonify(body)
    response.status_code = 202
    response.headers["Location"] = location
    return response


def job_accepted(job):
    return accepted(job_json(job), url_for("api.job_status", job_id=job.id))


def read_submission() -> tuple[bytes, str, Request]:
    """The file and the request from either shape: multipart field `file` (+ form fields) or JSON with base64
    `image` (+ keys). `task` and the articles' `task_type` are the same thing."""
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise errors.BadRequest('the body is not a JSON object; send {"image": "<base64>", "task": "text"}')
        encoded = body.get("image")
        if not isinstance(encoded, str) or not encoded:
            raise errors.BadRequest('JSON requests need "image": the file\'s bytes as a base64 string')
        if encoded.startswith("data:") and "," in encoded:  # a data: URL from a browser's FileReader
            encoded = encoded.split(",", 1)[1]
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise errors.BadRequest('"image" is not valid base64; encode the file\'s bytes with base64') from None
        name, options = str(body.get("filename") or "image"), body
    else:
        upload = request.files.get("file")
        if upload is None:
            raise errors.BadRequest(
                'send the file as multipart form field \'file\', or JSON {"image": "<base64>"} with '
                "Content-Type: application/json"
            )
        data, name, options = upload.read(), upload.filename or "upload", request.form
    # No task named (the reference articles' multipart request): the image's default task.
    task = options.get("task") or options.get("task_type") or runtime_config().default_task
    return data, name, Request.make(task, fields=options.get("fields"), target_lang=options.get("target_lang"))


def wait_for_caller(job):
    """Wait for the job while its caller is still there: a client that hung up gets its job cancelled (nobody will
    read the result) and its thread back."""
    hung_up = request.environ.get("waitress.client_disconnected", lambda: False)
    deadline = time.monotonic() + current_app.config["SYNC_TIMEOUT"]
    while True:
        job = jobs().wait(job.id, timeout=min(1.0, max(0.0, deadline - time.monotonic())))
        if job.finished_state or time.monotonic() >= deadline:
            return job
        if hung_up():
            return jobs().cancel(job.id)


@bp.post("/ocr")
def ocr():
    """Synchronous: queue the file, wait for it, answer with the result document (top-level `text`)."""
    slots = backend().sync_slots
    if not slots.acquire(blocking=False):
        raise errors.Busy(current_app.config["SYNC_SLOTS"], jobs().retry_after())
    try:
        job = submit(*read_submission())
        job = wait_for_caller(job)
    finally:
        slots.release()
    if job.state == DONE:
        body = jobs().result(job.id).to_dict()
        body.update({"job_id": job.id, "cached": job.cached})
        return jsonify(body)
    if job.state == FAILED:
        return error_response(errors.failed_job_status(job.error_kind), "OCR failed", job.error_text or "")
    if not job.finished_state:
        return error_response(
            504,
            "still working",
            f"the job is still {job.state}; poll GET /jobs/{job.id}",
            {"Location": url_for("api.job_status", job_id=job.id)},
        )
    return error_response(409, job.state, job.error_text or f"the job was {job.state}")


@bp.post("/jobs")
def create_job():
    return job_accepted(submit(*read_submission()))


@bp.get("/jobs")
def list_jobs():
    limit = min(max(request.args.get("limit", 50, type=int), 1), 500)
    offset = min(max(request.args.get("offset", 0, type=int), 0), 2**62)  # SQLite integers are 64-bit
    return jsonify({"jobs": [job_json(j) for j in jobs().list(limit, offset)], "counts": jobs().counts()})


@bp.get("/jobs/<job_id>")
def job_status(job_id):
    return jsonify(job_json(jobs().get(job_id)))


@bp.get("/jobs/<job_id>/result")
def job_result(job_id):
    # Any format on request; without one, the JSON when the image offers it (appliance.runtime.Runtime.result_format).
    fmt = request.args.get("format") or runtime_config().result_format
    if fmt not in export.FORMATS:
        raise errors.BadRequest(f"unknown format '{fmt}'; choose one of: {', '.join(export.FORMATS)}")
    job = jobs().get(job_id)
    if not job.has_result:
        return error_response(
            409, f"job {job.state}", job.error or f"the job is {job.state}; poll GET /jobs/{job_id}"
        )
    with render.heavy_work():  # the searchable PDF decodes every page
        body = export.export(jobs().result(job_id), fmt, source=jobs().input_path(job_id))
    response = Response(body, content_type=export.MEDIA_TYPES[fmt])
    if request.args.get("download"):
        response.headers["Content-Disposition"] = render.attachment(job.name, fmt)
    return response


@bp.get("/jobs/<job_id>/pages/<int:number>")
def job_page(job_id, number):
    """The page as an image (downscaled JPEG), for drawing the result's boxes over it."""
    job = jobs().get(job_id)
    image = render.page_preview(jobs().input_path(job_id), job.name, number)
    if image is None:
        return error_response(404, "not found", f"{job.name} has no page {number}")
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    response = Response(buf.getvalue(), mimetype="image/jpeg")
    response.headers["Cache-Control"] = "private, max-age=86400"
    return response


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id):
    return jsonify(job_json(jobs().cancel(job_id)))


@bp.delete("/jobs/<job_id>")
def delete_job(job_id):
    jobs().delete(job_id)
    return "", 204


@bp.get("/health")
def health():
    """Always 200 while the web app answers; the engine's readiness is its own field (loading, ready, failed)."""
    choice = backend().engine_choice
    engine = jobs().engine_status() | {"choice": choice.engine, "reason": choice.reason, "gpu": choice.gpu}
    waiting = jobs().counts().get("queued", 0)
    return jsonify(
        {
            "web": {"ready": True},
            "engine": engine,
            # max_pages: pages one job may have; turn_seconds: how long a job runs before waiting ones go first
            "queue": {
                "waiting": waiting,
                "limit": jobs().max_queue,
                "max_pages": jobs().max_pages,
                "turn_seconds": jobs().turn_seconds,
            },
            "kiosk": {"seen": backend().kiosk_seen},  # epoch of the kiosk page's last check-in (appliance.kiosk)
        }
    )


@bp.get("/kiosk/alive")
def kiosk_alive():
    """The kiosk's page checks in (app.js, on pages `appliance kiosk` opened): GET /health then tells the kiosk's
    supervisor the page is alive. Only this machine's browser counts."""
    if not security.is_loopback():
        return error_response(403, "forbidden", "only the kiosk on this machine checks in")
    backend().kiosk_seen = time.time()
    return "", 204


@bp.get("/scan")
def scan():
    return jsonify(scan_state())


# -- scanners (SANE): the kiosk's scanner page drives these; a scan's pages become one job --


@bp.get("/scanners")
def scanners():
    found = find_scanners()
    backend().scanners_seen.update(s.device for s in found)
    return jsonify({"scanners": [s.to_dict() for s in found]})


@bp.get("/scanners/options")
def scanner_options():
    device = scanner_device(request.args.get("device", ""))
    return jsonify({"device": device, **read_choices(device).to_dict()})


@bp.post("/scanners/scans")
def scanner_scan():
    """Scan with `device` (+ source, resolution, mode): into scan `scan` when given (more pages), else a new one;
    `preview: true` scans a quick low-resolution preview instead of a page. 202: poll GET /scanners/scans/<id>."""
    body = request.get_json(silent=True) or {}
    device = scanner_device(str(body.get("device", "")))
    scan = scans().get(str(body["scan"])) if body.get("scan") else scans().new()
    resolution = body.get("resolution")
    if resolution is not None and not (isinstance(resolution, int) and 25 <= resolution <= 4800):
        raise errors.BadRequest(f"resolution: a whole number of dpi from 25 to 4800, not {resolution!r}")
    scans().start(
        scan,
        device,
        source=body.get("source") or None,
        resolution=resolution,
        mode=body.get("mode") or None,
        preview=bool(body.get("preview")),
    )
    return accepted(scan_json(scan), url_for("api.scanner_scan_state", scan_id=scan.id))


@bp.get("/scanners/scans/<scan_id>")
def scanner_scan_state(scan_id):
    return jsonify(scan_json(scans().get(scan_id)))


@bp.get("/scanners/scans/<scan_id>/pages/<int:number>")
def scanner_page(scan_id, number):
    """A scanned page (0: the preview) as a JPEG for the screen: ?size=thumb for the page list."""
    path = scans().get(scan_id).page(number)
    image = render.page_preview(path, path.name, 1)
    if request.args.get("size") == "thumb":
        image.thumbnail((360, 360))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    response = Response(buf.getvalue(), mimetype="image/jpeg")
    response.headers["Cache-Control"] = "no-store"  # page numbers move when a page is removed
    return response


@bp.delete("/scanners/scans/<scan_id>/pages/<int:number>")
def scanner_remove_page(scan_id, number):
    scan = scans().get(scan_id)
    scans().remove_page(scan, number)
    return jsonify(scan_json(scan))


@bp.post("/scanners/scans/<scan_id>/cancel")
def scanner_cancel(scan_id):
    scan = scans().get(scan_id)
    scans().cancel(scan)
    return jsonify(scan_json(scan))


@bp.post("/scanners/scans/<scan_id>/job")
def scanner_job(scan_id):
    """The scan's pages as one job (task and options as for POST /jobs); the scan is gone afterwards."""
    body = request.get_json(silent=True) or {}
    req = Request.make(
        body.get("task") or runtime_config().default_task,
        fields=body.get("fields"),
        target_lang=body.get("target_lang"),
    )
    return job_accepted(submit_scan(scan_id, req))


@bp.delete("/scanners/scans/<scan_id>")
def scanner_delete(scan_id):
    scans().delete(scans().get(scan_id))
    return "", 204


@bp.get("/openapi.json")
def openapi():
    return jsonify(openapi_document(current_app.config, runtime_config()))
