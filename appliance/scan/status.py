"""What the UI shows of the scan folder: the queue (`queue_state`) and the ledger's rows (`ledger_rows`). Both read
the ledger read-only and work whether or not a watcher is running."""

from __future__ import annotations

import json
import time
from pathlib import Path

from appliance.scan.folders import task_of
from appliance.scan.ledger import LEDGER, column, formats, open_ledger, state_dir
from appliance.scan.trees import Tree
from appliance.scan.watcher import RESCAN_SECONDS


def queue_state(root, recent: int = 200) -> dict:
    """The folder's queue for the UI: counts and per-file state (waiting, working, done, failed), newest first.

    Reads the ledger and the running watcher's status file; works whether or not a watcher is running.
    """
    root = Path(root)
    state = state_dir(root)
    status = {}
    try:
        status = json.loads((state / "status.json").read_text())
    except (OSError, ValueError):
        pass
    fresh = time.time() - status.get("heartbeat", 0) < RESCAN_SECONDS * 2 + 60
    running = bool(status) and not status.get("stopped") and fresh
    files = (
        [
            {"name": w["name"], "source": w["source"], "state": "waiting", "detail": w["detail"], **_said(w)}
            for w in status.get("waiting", [])
        ]
        if running
        else []
    )
    counts = {"waiting": len(files), "working": 0, "done": 0, "failed": 0}
    if (state / LEDGER).exists():
        db = open_ledger(state, readonly=True)
        try:
            for row in db.execute("SELECT state, count(*) AS n FROM files GROUP BY state"):
                bucket = ui_state(row["state"])
                if bucket:
                    counts[bucket] += row["n"]
            for row in db.execute("SELECT * FROM files ORDER BY updated DESC LIMIT ?", (recent,)):
                bucket = ui_state(row["state"])
                if bucket:
                    files.append(_file(row, bucket))
        finally:
            db.close()
    return {
        "root": str(root),
        "running": running,
        "engine": status.get("engine"),
        "counts": counts,
        "files": files,
        "unknown_folders": status.get("unknown_folders", []),
        "sticks": status.get("sticks", []),
        "pulled": status.get("pulled", []),
    }


def _file(row, bucket: str) -> dict:
    """One ledger row as the UI lists it."""
    outputs = [f"{row['out_dir']}/{row['out_stem']}.{ext}" for ext in formats(row)] if row["state"] == "done" else []
    # What retry_failed can do for it now: put it back, or nothing until its USB stick is inserted.
    retryable = row["state"] == "failed" and bool(row["work"])  # links and devices are never retried
    stick = Tree.usb(Path(row["tree"])) if row["tree"] else None
    stick_out = retryable and stick is not None and not stick.present()
    return {
        "id": row["id"],  # for retry_failed(root, ids=[...])
        "retry": retryable and not stick_out and Path(row["final"]).is_file(),
        "waiting_for_stick": stick.label if stick_out else None,
        "name": row["rel"],
        "source": Path(row["tree"]).name if row["tree"] else "inbox",
        "state": bucket,
        "step": row["state"],
        "detail": row["error"] or row["note"] or "",
        **_said({"message": json.loads(row["message"]) if column(row, "message") else None}),
        "task": task_of(row["folder"]),
        "reused": bool(row["reused"]),
        "outputs": outputs,
        "original": row["final"],
        "updated": row["updated"],
    }


def _said(item: dict) -> dict:
    """`message`: the detail's appliance.messages id and values (a UI says it in its language), when it has one."""
    return {"message": item.get("message")} if item.get("message") else {}


def ledger_rows(root) -> list[dict]:
    """Every ledger row, oldest first (for scripts, benchmarks and support)."""
    db = open_ledger(state_dir(root), readonly=True)
    try:
        return [dict(row) for row in db.execute("SELECT * FROM files ORDER BY id")]
    finally:
        db.close()


def ui_state(step: str) -> str | None:
    if step in ("claiming", "queued"):
        return "waiting"
    if step in ("working", "publishing", "moving", "failing"):
        return "working"
    if step in ("done", "failed"):
        return step
    return None  # lost (never started) and retried (a new row follows) are history, not queue
