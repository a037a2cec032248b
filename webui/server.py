"""`appliance serve`: the Flask app under waitress, a pure-Python production WSGI server (Debian: python3-waitress).

Loopback by default. Listening on other addresses is LAN mode, which needs a token: refusing to start without one
is safer than an open OCR service on the office network.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal

from waitress.server import create_server

from webui import close_app, create_app

log = logging.getLogger(__name__)

TOKEN_ENV = "APPLIANCE_LAN_TOKEN"
THREADS = 16  # each synchronous POST /ocr holds a thread while it waits for the queue (at most SYNC_SLOTS of them)


def make_server(app, host: str = "127.0.0.1", port: int = 8000):
    """A waitress server bound now (port 0 = any free port: `server.effective_port`); call `.run()` to serve."""
    return create_server(
        app,
        host=host,
        port=port,
        threads=THREADS,
        ident="ocr-appliance",
        max_request_body_size=app.config["MAX_CONTENT_LENGTH"] + 1024 * 1024,
        # Read ahead on each connection, so a waiting POST /ocr learns when its client hung up
        # (environ["waitress.client_disconnected"]) and gives its thread back.
        channel_request_lookahead=1,
    )


def stop(server) -> None:
    """Stop a server whose `run()` is in another thread. Its sockets are closed from inside its own loop (a thunk
    run by its trigger), so select() never sees a closed descriptor; the loop ends when nothing is left to watch."""

    def close_all():
        for dispatcher in list(server._map.values()):
            dispatcher.close()

    server.trigger.pull_trigger(close_all)
    server.task_dispatcher.shutdown()


def _terminate(signum, frame):
    raise SystemExit(0)  # waitress's run() ends on SystemExit; `serve` then closes the jobs cleanly


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    host: str,
    port: int,
    engine: str,
    model_dir: str | None,
    data_dir: str,
    lan_token: str | None = None,
    vllm_url: str | None = None,
    scan_dir: str | None = None,
    runtime_config=None,
) -> None:
    """`runtime_config`: the image's runtime config (appliance.runtime.Runtime) the CLI read; None: read it here."""
    # The image passes the token in the environment: a command-line argument shows in `ps` to every user.
    lan_token = lan_token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(host) and not lan_token:
        raise SystemExit(
            f"refusing to listen on {host}: serving beyond this machine needs --lan-token SECRET or {TOKEN_ENV}"
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = create_app(
        {
            "ENGINE": engine,
            "MODEL_DIR": model_dir,
            "VLLM_URL": vllm_url,
            "DATA_DIR": data_dir,
            "LAN_TOKEN": lan_token,
            "SCAN_DIR": scan_dir,
            "RUNTIME": runtime_config,
        }
    )
    server = make_server(app, host, port)
    signal.signal(signal.SIGTERM, _terminate)  # systemd stops services with SIGTERM
    log.info("serving the UI and API on http://%s:%s/ (data in %s)", host, server.effective_port, data_dir)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        close_app(app, timeout=60)  # the scan folder finishes its current file first
