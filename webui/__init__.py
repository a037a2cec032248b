"""The kiosk web UI and the HTTP API: one Flask app, two blueprints (`ui` pages, `api` for programs).

Both submit through the same `appliance.jobs.Jobs` (one queue, one engine owner, made by `webui.backend`); nothing
here runs OCR itself. What the image configures (language, default task, outputs, engine) comes from
`appliance.runtime`.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from flask import Flask

from appliance import persistence, runtime

DEFAULTS = {
    "DATA_DIR": str(runtime.DATA_DIR),
    "ENGINE": None,  # None: the runtime config's engine (appliance.runtime), which defaults to auto
    "MODEL_DIR": None,  # None: the runtime config's model directory (gpu images)
    "VLLM_URL": None,
    "LAN_TOKEN": None,  # set: callers other than this machine need `Authorization: Bearer <token>`
    "MAX_QUEUE": 32,
    "MAX_JOB_PAGES": 300,  # pages one job may have (appliance.jobs.MAX_JOB_PAGES): more is refused at submission
    "MAX_CONTENT_LENGTH": 64 * 1024 * 1024,  # bytes of request body (413 above)
    "SYNC_TIMEOUT": 600,  # seconds POST /ocr waits for its job
    # POST /ocr requests waiting at once; more get 503 + Retry-After. Below the server's 16 threads, so the pages,
    # GET /health and cancels always find a thread, however many programs wait.
    "SYNC_SLOTS": 8,
    "SCAN_DIR": None,  # set: run the scan-to-folder watcher on this folder, through the same job queue
    "SCAN_OPTIONS": {},  # keyword arguments for the watcher (quiet, give_up, rescan, media_dirs); tests shorten them
    "USB_ROOT": "/media",  # where removable media are mounted; the in-app file browser shows only this tree
    "MOUNTS_FILE": "/proc/mounts",  # read to tell a persistent data partition from RAM (appliance.storage)
    "MEDIUM_MARKER": "/run/appliance/medium-verified",  # written by the image after a medium check; see storage.py
    # Persistent storage on the boot stick (appliance.persistence): the root unit's state, and the file that asks it
    # to create the partition (the unit trusts nothing in it).
    "PERSISTENCE_STATE": str(persistence.STATE_FILE),
    "PERSISTENCE_REQUEST": str(persistence.REQUEST_FILE),
    "JOBS": None,  # a ready `Jobs` (tests); otherwise one is made from ENGINE/MODEL_DIR/DATA_DIR
    "RUNTIME": None,  # a ready appliance.runtime.Runtime (`serve` loads it once); else read from APPLIANCE_CONFIG
    "APPLIANCE_CONFIG": str(runtime.CONFIG_PATH),  # the image's runtime config (written by the image builder)
    "GPU_STACK_FILE": "/etc/appliance/gpu-stack.json",  # gpu images only: the banner says why OCR runs on the CPU
    "SYSFS": "/sys",  # where appliance.gpu looks for the card (tests use a fake tree)
    "MODEL_LICENSE_DIR": "/usr/share/doc/appliance-model",  # LICENSE + NOTICE of the bundled weights (gpu images)
}


def create_app(config: dict | None = None) -> Flask:
    """The app, its backend (job queue, engine, scan folder) started: call `close_app(app)` when done with it."""
    from webui import api, i18n, security, ui
    from webui.backend import Backend

    app = Flask(__name__)
    app.config.from_mapping(DEFAULTS)
    app.config.update(config or {})
    app.json.sort_keys = False  # keep the result contract's field order (text near the top for people reading it)
    data_dir = Path(app.config["DATA_DIR"])
    data_dir.mkdir(parents=True, exist_ok=True)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = _secret_key(data_dir)
    Backend(app)
    security.init_app(app)
    i18n.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(ui.bp)
    return app


def close_app(app: Flask, timeout: float = 30) -> None:
    """Stop what `create_app` started: the scan folder's watcher and the job queue's worker."""
    from webui.backend import KEY

    app.extensions[KEY].close(timeout)


def _secret_key(data_dir: Path) -> str:
    """Kept in the data directory so sessions (CSRF tokens, LAN login) survive a restart."""
    path = data_dir / "secret_key"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(secrets.token_hex(32))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    return path.read_text().strip()
