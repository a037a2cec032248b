"""What both blueprints use: the app's backend (queue, engine choice, runtime config), submitting a file, a job as
JSON, and the scan folder's state. The `ui` and `api` blueprints import from here, never from each other."""

from __future__ import annotations

import time
from pathlib import Path

from flask import current_app, url_for

from appliance import export
from appliance.jobs import RUNNING, Job, Jobs
from appliance.messages import Text
from appliance.runtime import Runtime
from appliance.scanner import Scan, Scans, find_scanners
from webui import errors, i18n
from webui.backend import KEY, Backend


def backend() -> Backend:
    return current_app.extensions[KEY]


def jobs() -> Jobs:
    return backend().jobs


def runtime_config() -> Runtime:
    """The image's runtime config (language, default task, outputs, ...) this app was started with."""
    return backend().runtime


def submit(data: bytes, name: str, req) -> Job:
    """Queue a file (the pages' upload and the API's POST /ocr and /jobs); not an image or PDF at all: 415."""
    if not data:
        raise errors.BadRequest(Text("upload_empty", name=name))
    errors.check_type(data, name)
    return jobs().submit(data, name, req)


def scans() -> Scans:
    return backend().scans


def scanner_device(device: str) -> str:
    """`device` when a scanner listing named it (a fresh listing if not yet): only devices SANE found are opened."""
    seen = backend().scanners_seen
    if device and device not in seen:
        seen.update(s.device for s in find_scanners())
    if not device or device not in seen:
        raise errors.BadRequest(Text("scanner_unknown", device=device or "-"))
    return device


def submit_scan(scan_id: str, req) -> Job:
    """A scan's pages as one multi-page TIFF job; the scan's folder goes once the job holds its own copy."""
    scan = scans().get(scan_id)
    tiff = scans().as_tiff(scan)
    name = time.strftime("scan-%Y%m%d-%H%M%S.tif", time.localtime(tiff.stat().st_mtime))
    job = submit(tiff.read_bytes(), name, req)
    scans().delete(scan)
    return job


def scan_json(scan: Scan) -> dict:
    body = scan.to_dict()
    body["error_text"] = i18n.say(scan.error) if scan.error else None
    body["note_text"] = i18n.say(scan.note) if scan.note else None
    body["page_urls"] = [url_for("api.scanner_page", scan_id=scan.id, number=n) for n in range(1, body["pages"] + 1)]
    body["preview_url"] = url_for("api.scanner_page", scan_id=scan.id, number=0) if body["preview"] else None
    return body


def job_json(job: Job) -> dict:
    body = job.to_dict()
    del body["cache_key"]
    body["position"] = jobs().position(job.id)
    body["cancelling"] = jobs().cancelling(job.id)
    live = jobs().live(job.id) if job.state == RUNNING else None  # the page being read, as it is written
    if live is not None:
        body["live"] = live
    body["links"] = {"self": url_for("api.job_status", job_id=job.id)}
    if job.has_result:  # every format: a program may ask for any (the UI offers only the configured outputs)
        body["links"].update({fmt: url_for("api.job_result", job_id=job.id, format=fmt) for fmt in export.FORMATS})
    return body


def scan_state(recent: int = 100) -> dict:
    """The scan folder's queue (`appliance.scan.queue_state`) plus the inbox folder -> task table; or, when the app
    runs without `--scan`, `enabled: false` and how to turn it on. The kiosk's scan page renders and polls this."""
    from appliance import scan

    root = current_app.config["SCAN_DIR"]
    if not root:
        return {
            "enabled": False,
            "detail": "the scan folder is off; start the app with `appliance serve --scan ROOT`",
        }
    state = scan.queue_state(root, recent=recent)
    scanner = backend().scanner
    # The status file's heartbeat says whether a watcher is alive; the thread says whether it is ours and running.
    state["running"] = bool(state["running"] and scanner is not None and scanner.thread.is_alive())
    state["inbox"] = str(Path(root) / "inbox")
    for item in state[
        "files"
    ]:  # where the outputs went, said once, then their names (for people; `outputs` is whole)
        folders = {str(Path(p).parent) for p in item.get("outputs", [])}
        item["output_dir"] = _shorter(folders.pop(), root) if len(folders) == 1 else None
        item["output_names"] = [Path(p).name for p in item.get("outputs", [])]
        # The detail in the page's language (`detail` stays English, `message` has its id and values).
        known = Text.from_dict(item["message"]) if item.get("message") else None
        item["detail_ui"] = i18n.say(known or item["detail"])
        if item.get("waiting_for_stick"):  # said in the reason, which the page shows as it is
            waiting = i18n.gettext("scan_waiting_for_stick", stick=item["waiting_for_stick"])
            item["detail"] = f"{item['detail']} {waiting}".strip()
            item["detail_ui"] = f"{item['detail_ui']} {waiting}".strip()
    supported = jobs().engine_status()["tasks"]
    state["folders"] = [
        {
            "folder": name,
            "task": req.task.value,
            "options": req.options(),
            "available": supported is None or req.task.value in supported,  # None: the engine is still starting
        }
        for name, req in scan.FOLDERS.items()
    ]
    return {"enabled": True, **state}


def _shorter(path: str, root: str) -> str:
    """`outbox/doc` for a folder under ROOT; other places (a USB stick's OCR-OUTBOX) as they are."""
    try:
        return str(Path(path).relative_to(Path(root).absolute()))
    except ValueError:
        return path
