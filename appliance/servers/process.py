"""A model server process on loopback, as the appliance runs it (vLLM today; the same steps fit llama-server).

The launcher's side, `start`: run the server's command, pass its output on (the journal keeps it) while following its
start-up into the run directory's progress.json, write settings.json (what clients must know, e.g. the pixel cap),
and wait until the server answers. The web app's side, `wait_for_unit`: while the image's systemd unit starts the
server, wait and pass on how far its start-up got.

The run directory is the server unit's RuntimeDirectory (e.g. /run/appliance-vllm); a dev machine has none.

A server is the leader of its own process group, and `run` ends the whole group when it ends: vLLM's engine runs in
a child process that outlives a killed API server, holding its memory and ports (hunyuanocr.md, "Served for real").
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from appliance.files import write_atomic
from appliance.ocr import steps
from appliance.ocr.engines.openai_client import ModelServer, OpenAIEngine, server_ready
from appliance.ocr.errors import EngineUnavailable

PROGRESS = "progress.json"  # {"step": a key of appliance.ocr.steps.STEPS, "percent": 0..100}
SETTINGS = "settings.json"  # what the server runs with: its url, and the limits its clients must keep
RUNNING_STATES = ("active", "activating", "reloading")  # systemd's words for a unit that is (re)starting or up

# A line of a server's output -> (step, percent) when it marks a step of the start-up, else None.
StartPhase = Callable[[str], tuple[str, int] | None]


def read_run_file(name: str, run_dir: Path) -> dict:
    """settings.json or progress.json from a server's run directory; {} when absent or unreadable."""
    try:
        data = json.loads((run_dir / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def output_lines(stream):
    """Lines of a byte stream, where tqdm's carriage-return redraws count as lines too."""
    pending = b""
    while chunk := stream.read1(65536):
        pending += chunk
        *lines, pending = re.split(rb"\r\n|\r|\n", pending)
        yield from (line.decode("utf-8", errors="replace") for line in lines)
    if pending:
        yield pending.decode("utf-8", errors="replace")


def follow(stream, log, run_dir: Path | None, start_phase: StartPhase) -> None:
    """Pass the server's output on and keep progress.json at its latest start-up step."""
    last = None
    for line in output_lines(stream):
        if not line.strip():
            continue
        log.write(line + "\n")
        log.flush()
        phase = start_phase(line) if run_dir else None
        if phase and phase != last:
            last = phase
            write_atomic(run_dir / PROGRESS, json.dumps({"step": phase[0], "percent": phase[1]}).encode())


def start(
    command: list[str],
    url: str,
    env: dict,
    engine: str,
    what: str,
    start_phase: StartPhase,
    timeout: float = 900,
    log=None,
    run_dir: Path | None = None,
    settings: dict | None = None,
) -> subprocess.Popen:
    """Run `command` and wait until a server answers at `url`; EngineUnavailable (and no process left) otherwise.

    `engine` names the engine in errors, `what` the command ("vllm serve"). `log`: a text file for the server's
    output (default: our stdout). `run_dir`: where settings.json (`settings` plus the url) and progress.json go.
    """
    if server_ready(url):
        raise EngineUnavailable(engine, f"something already answers at {url}; stop it or choose another --port")
    if run_dir:
        (run_dir / PROGRESS).unlink(missing_ok=True)
        write_atomic(run_dir / SETTINGS, json.dumps({"url": url, **(settings or {})}).encode())
    # A session of its own: its process group is the server and every process it starts (stop_group).
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    threading.Thread(
        target=follow, args=(process.stdout, log or sys.stdout, run_dir, start_phase), daemon=True
    ).start()
    deadline = time.monotonic() + timeout
    try:
        while not server_ready(url):
            if process.poll() is not None:
                raise EngineUnavailable(engine, f"{what} exited with status {process.returncode} before it was ready")
            if time.monotonic() > deadline:
                raise EngineUnavailable(engine, f"{what} did not answer at {url} within {timeout:.0f} s")
            time.sleep(1.0)
    except BaseException:  # not ready, or interrupted (Ctrl-C): nothing of it may stay behind
        stop_group(process)
        raise
    return process


def group_members(pgid: int) -> list[int]:
    """The live processes of process group `pgid` (zombies hold no memory or ports, so they do not count)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # it ended while we looked
            continue
        # The command name may hold spaces and parentheses: the fixed fields start after its last ')'.
        state, _ppid, pgrp, *_ = text[text.rindex(")") + 2 :].split()
        if int(pgrp) == pgid and state not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


def stop_group(process: subprocess.Popen, grace: float = 20.0) -> None:
    """End a server started by `start` and everything it started: SIGTERM to its process group, SIGKILL to what is
    left after `grace` seconds (vLLM's engine shuts down cleanly in a few)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while group_members(process.pid) and time.monotonic() < deadline:
            if process.poll() is None:
                try:
                    process.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass
            else:
                time.sleep(0.2)
        if not group_members(process.pid):
            break
    process.poll()  # reap the leader


def run(process: subprocess.Popen, what: str) -> int:
    """Serve until the server ends, then end what it left behind; our exit status (systemd restarts on failure).

    SIGTERM or SIGINT (systemd stopping the unit, Ctrl-C) stops the server's whole group: status 0. A server that
    ends by itself has failed, whatever its own status says: vLLM exits 0 after its engine process died.
    """
    stopping = []

    def stop(signum, frame):
        stopping.append(signum)
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        status = process.wait()
    finally:
        stop_group(process)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopping:
        return 0
    print(f"{what} ended by itself (status {status}); its process group is stopped", file=sys.stderr, flush=True)
    return status if status > 0 else 1


def unit_state(unit: str) -> str:
    """systemd's word for the unit (active, activating, failed, inactive, ...); 'unknown' without systemd."""
    try:
        out = subprocess.run(
            ["systemctl", "is-active", unit], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def wait_for_unit(
    url: str,
    state: Callable[[], str],
    run_dir: Path,
    waiting_step: str,
    progress=None,
    timeout: float = 1200,
    poll: float = 2.0,
) -> bool:
    """On the image: wait while the server's unit is starting (or restarting after a crash) until the server
    answers, passing on how far its start-up got (`waiting_step` until its log says more). False when the unit is
    not running (skipped: no usable GPU; failed) or the time is up. `state()`: the unit's systemd state."""
    started = time.monotonic()
    while not server_ready(url):
        now = state()
        if now not in RUNNING_STATES or time.monotonic() - started > timeout:
            return False
        phase = read_run_file(PROGRESS, run_dir) if progress else {}
        step = phase.get("step") if phase.get("step") in steps.STEPS else waiting_step
        percent = phase["percent"] if isinstance(phase.get("percent"), int) else None
        steps.report(progress, step, f"{time.monotonic() - started:.0f} s", percent)
        time.sleep(poll)
    return True


def open_client(server: ModelServer, run_dir: Path, model_dir, url: str | None = None, **options) -> OpenAIEngine:
    """The client for `server` at `url`, capped at the pixels that server was started with when the run
    directory's settings.json is that server's. `options`: OpenAIEngine's timeout, max_tokens."""
    url = (url or server.default_url).rstrip("/")
    served = read_run_file(SETTINGS, run_dir)
    ours = served.get("url") == url and isinstance(served.get("max_pixels"), int)
    return OpenAIEngine(model_dir, server, url, max_pixels=served["max_pixels"] if ours else None, **options)
