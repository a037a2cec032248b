"""The kiosk web UI and the HTTP API: one Flask app, two blueprints (`ui` pages, `api` for programs).

Both submit through the same `appliance.jobs.Jobs` (one queue, one engine owner); nothing here runs OCR itself.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path

from flask import Flask

DEFAULTS = {
    "DATA_DIR": "/srv/ocr",
    "ENGINE": "auto",
    "MODEL_DIR": None,
    "VLLM_URL": None,
    "LAN_TOKEN": None,  # set: callers other than this machine need `Authorization: Bearer <token>`
    "MAX_QUEUE": 32,
    "MAX_CONTENT_LENGTH": 64 * 1024 * 1024,  # bytes of request body (413 above)
    "SYNC_TIMEOUT": 600,  # seconds POST /ocr waits for its job
    "SCAN_DIR": None,  # set: run the scan-to-folder watcher on this folder, through the same job queue
    "SCAN_OPTIONS": {},  # keyword arguments for the watcher (quiet, give_up, rescan, media_dirs); tests shorten them
    "USB_ROOT": "/media",  # where removable media are mounted; the in-app file browser shows only this tree
    "MOUNTS_FILE": "/proc/mounts",  # read to tell a persistent data partition from RAM (appliance.storage)
    "MEDIUM_MARKER": "/run/appliance/medium-verified",  # written by the image after a medium check; see storage.py
    "JOBS": None,  # a ready `Jobs` (tests); otherwise one is made from ENGINE/MODEL_DIR/DATA_DIR
    "APPLIANCE_CONFIG": "/etc/appliance/config.json",  # written by the image builder (appliance/build/app.py)
    "GPU_STACK_FILE": "/etc/appliance/gpu-stack.json",  # gpu images only: the banner says why OCR runs on the CPU
    "SYSFS": "/sys",  # where appliance.gpu looks for the card (tests use a fake tree)
    "MODEL_LICENSE_DIR": "/usr/share/doc/appliance-model",  # LICENSE + NOTICE of the bundled weights (gpu images)
}

# What the UI takes from the image's config.json; a missing file or key keeps these.
# language None: the browser's choice (Accept-Language), as on any host without an image config.
CONFIG_DEFAULTS = {"language": None, "default_task": "spotting"}


def create_app(config: dict | None = None) -> Flask:
    from appliance.jobs import Jobs
    from appliance.ocr.engines import choose, open_engine
    from webui import api, i18n, security, ui

    app = Flask(__name__)
    app.config.from_mapping(DEFAULTS)
    app.config.update(config or {})
    app.json.sort_keys = False  # keep the result contract's field order (text near the top for people reading it)
    data_dir = Path(app.config["DATA_DIR"])
    data_dir.mkdir(parents=True, exist_ok=True)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = _secret_key(data_dir)
    app.extensions["appliance_config"] = load_appliance_config(app.config["APPLIANCE_CONFIG"])

    engine, model_dir, vllm_url = app.config["ENGINE"], app.config["MODEL_DIR"], app.config["VLLM_URL"]
    # Asked once: the status page shows which engine `auto` picks and why (GPU found or not, model given or not).
    app.extensions["engine_choice"] = choose(engine, model_dir, vllm_url)

    def opener(progress):
        """Runs in the queue's worker; the words show on the kiosk's start screen while the engine loads."""
        return open_engine(engine, model_dir=model_dir, vllm_url=vllm_url, progress=progress)

    jobs = app.config["JOBS"] or Jobs(data_dir, opener, app.config["MAX_QUEUE"])
    app.extensions["jobs"] = jobs
    if app.config["SCAN_DIR"]:
        from appliance.scan import JobsRecognizer, WatcherThread

        app.extensions["scan"] = WatcherThread(
            app.config["SCAN_DIR"], JobsRecognizer(jobs), **app.config["SCAN_OPTIONS"]
        )

    security.init_app(app)
    i18n.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(ui.bp)
    return app


def load_appliance_config(path: str | os.PathLike | None) -> dict:
    """The image's site settings for the UI, over CONFIG_DEFAULTS. A broken file must not keep the kiosk from
    starting: it is logged and the defaults apply."""
    config = dict(CONFIG_DEFAULTS)
    if not path or not Path(path).exists():
        return config
    try:
        loaded = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        logging.getLogger(__name__).warning("ignoring %s: %s", path, e)
        return config
    config.update({k: loaded[k] for k in CONFIG_DEFAULTS if isinstance(loaded, dict) and loaded.get(k)})
    return config


def _secret_key(data_dir: Path) -> str:
    """Kept in the data directory so sessions (CSRF tokens, LAN login) survive a restart."""
    path = data_dir / "secret_key"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(secrets.token_hex(32))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    return path.read_text().strip()
