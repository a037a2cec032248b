"""The boot test's checks of the appliance's ways in for paper beyond uploads: a scanner (SANE) turned on after boot,
and office MFPs writing into the SMB share (images built with smb=on). Like every check, each returns the problems
it found ([] when all is well) and adds its figures to `result`."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from imagebuilder.boottest.checks import FULL_PAGE_MAX_CER, cer, job_state
from imagebuilder.boottest.sticks import OCR_TEXT, text_png
from imagebuilder.boottest.vm import Vm

# ---- a scanner turned on after boot (appliance.scanner) -----------------------------------------------------------


def pgm_gz(png: bytes) -> bytes:
    """A page as a gzipped binary PGM: what SANE's `pnm` virtual scanner reads (a text page compresses ~50x)."""
    import gzip
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("L").save(out, format="PPM")  # mode L: P5 (PGM)
    return gzip.compress(out.getvalue(), mtime=0)


def check_scanner(vm: Vm, token: str, result: dict, timeout: float = 600) -> list[str]:
    """A scanner plugged in after boot is found and its page read, through the API the scanner page uses: the
    debug shell turns on SANE's `pnm` virtual scanner (it "scans" /tmp/input.ppm) with a page of OCR_TEXT on it;
    GET /scanners must list it, POST /scanners/scans scan it, and the scan's job read OCR_TEXT back."""
    started = time.monotonic()
    data = base64.encodebytes(pgm_gz(text_png(OCR_TEXT, 940))).decode()  # 76-character lines: under the tty's limit
    status, said = vm.shell(
        "echo pnm > /etc/sane.d/dll.d/boot-test && base64 -d <<'PAGE' | gunzip > /tmp/input.ppm\n"
        f"{data}PAGE\nchmod 644 /tmp/input.ppm",
        timeout=120,
    )
    if status != 0:
        return [f"scanner: could not set up the virtual scanner in the guest ({status}): {said[-300:]!r}"]
    try:
        status, body = vm.http("/scanners", token, timeout=120)
        devices = [s["device"] for s in json.loads(body).get("scanners", [])] if status == 200 else []
        result["scanner_devices"] = devices
        if "pnm:0" not in devices:
            return [f"GET /scanners: {status}, devices {devices}: the virtual scanner pnm:0 is not listed"]
        status, body = vm.http("/scanners/scans", token, timeout=60, body={"device": "pnm:0", "resolution": 150})
        if status != 202:
            return [f"POST /scanners/scans: {status} {body[:300]!r}"]
        scan_id = json.loads(body)["id"]
        deadline = time.monotonic() + timeout
        state = {}
        while time.monotonic() < deadline:
            status, body = vm.http(f"/scanners/scans/{scan_id}", token, timeout=30)
            state = json.loads(body) if status == 200 else {}
            if state.get("state") not in ("scanning", None):
                break
            time.sleep(2)
        result["scanner_scan"] = {k: state.get(k) for k in ("state", "pages", "error_text")}
        if state.get("state") != "ready" or state.get("pages") != 1:
            return [f"scanner: the scan ended {state.get('state')} with {state.get('pages')} page(s): {state}"]
        status, body = vm.http(f"/scanners/scans/{scan_id}/job", token, timeout=60, body={"task": "text"})
        if status != 202:
            return [f"POST /scanners/scans/{scan_id}/job: {status} {body[:300]!r}"]
        job_id = json.loads(body)["id"]
        job = {}
        while time.monotonic() < deadline:
            job = job_state(vm, token, job_id)
            if job.get("state") in ("done", "failed", "cancelled"):
                break
            time.sleep(3)
        status, text = vm.http(f"/jobs/{job_id}/result?format=txt", token, timeout=60)
        text = text.decode(errors="replace").strip() if status == 200 else ""
        result["scanner_text"] = text
        result["scanner_seconds"] = round(time.monotonic() - started, 1)
        if job.get("state") != "done" or cer(OCR_TEXT, text) > FULL_PAGE_MAX_CER:
            return [f"scanner: the scanned page's job {job.get('state')} read {text!r}, expected {OCR_TEXT!r}"]
        return []
    finally:
        vm.shell("rm -f /etc/sane.d/dll.d/boot-test /tmp/input.ppm", timeout=30)


# ---- scan to folder over SMB (images built with smb=on: appliance.smb) -----------------------------------------

SMB_FOLDER = "text"  # the inbox folder written to: plain text, what the CPU engine reads exactly
SMB_SLOW, SMB_PIECES = "SCN_0001.png", "SCN_0002.png"
SMB_WIDTHS = {"slow": 840, "pieces": 820, "again": 800}  # a picture of OCR_TEXT each (none of the others' widths)
SMB_PAUSE = 5  # seconds a writer pauses: longer than the scan folder's quiet period (3 s)


def smbclient(vm: Vm, share: str, commands: str, login: str | None, *options: str, stdin=None, timeout=120):
    """(exit status, output) of the host's smbclient on the guest's share, through the port forward. `login` is
    USER%PASSWORD, or None for a guest."""
    auth = ["-N"] if login is None else ["-U", login]
    command = ["smbclient", f"//127.0.0.1/{share}", "-p", str(vm.smb_port), *auth, *options, "-c", commands]
    try:
        done = subprocess.run(
            command, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return -1, f"no answer in {timeout} s"
    return done.returncode, done.stdout


def smb_names(listing: str) -> set[str]:
    """The names in smbclient's `ls` output (its entry lines are indented; names may hold spaces)."""
    names = set()
    for line in listing.splitlines():
        m = re.match(r"^  (\S.*?)\s+[A-Z]*\s+\d+\s+\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}$", line)
        if m and m.group(1) not in (".", ".."):
            names.add(m.group(1))
    return names


def smb_refused(what: str, answer: tuple[int, str], expected: str) -> list[str]:
    """[] when smbclient failed saying `expected`, else the problem (it got in, or failed for another reason)."""
    status, said = answer
    if status != 0 and expected in said:
        return []
    got = "it got in" if status == 0 else f"exit {status}"
    return [f"SMB {what}: expected {expected}, but {got}: {' '.join(said.split())[-200:]!r}"]


def check_smb(vm: Vm, login: str, report: dict, result: dict, timeout: float = 240) -> list[str]:
    """An office MFP's scan to folder, done with the host's smbclient: into the `scan` share's text/ folder, a slow
    writer (the file created, held open and empty for SMB_PAUSE s, then written), a file sent whole three times
    over, longer each time (open/close several times; its prefixes do not open), and the slow file's name again
    once the first has left the inbox. Their .txt outputs must come out in the read-only `outbox` share saying
    OCR_TEXT, two for the reused name. A wrong password, a guest and an SMB1 client are refused; smbd listens on 445
    and nothing on NetBIOS's ports.
    `login`: USER%PASSWORD, as the image was built (smb_user, smb_password)."""
    if not shutil.which("smbclient"):
        return ["the SMB check needs smbclient on this host (apt install smbclient)"]
    problems = []
    listen = report.get("listen", [])
    if not any(":445/smbd" in listener for listener in listen):
        problems.append(f"smbd is not listening on port 445: {listen}")
    netbios = [listener for listener in listen if re.search(r":13[789]/", listener)]
    if netbios:
        problems.append(f"NetBIOS ports open (SMB is to be on TCP 445 only): {netbios}")
    started = time.monotonic()
    pictures = vm.dir / "smb"
    pictures.mkdir(exist_ok=True)
    for name, width in SMB_WIDTHS.items():
        (pictures / f"{name}.png").write_bytes(text_png(OCR_TEXT, width))
    status, said = smbclient(vm, "scan", "ls", login)
    if status != 0 or SMB_FOLDER not in smb_names(said):
        return [
            *problems,
            f"SMB share 'scan': exit {status}, no {SMB_FOLDER}/ folder: {' '.join(said.split())[-300:]}",
        ]

    def put(local: Path, name: str, stdin=None) -> None:
        status, said = smbclient(vm, "scan", f"put {local} {SMB_FOLDER}\\{name}", login, stdin=stdin)
        if status != 0:
            problems.append(f"SMB put of {local.name} as {SMB_FOLDER}/{name}: exit {status}: {said[-200:]!r}")

    feeder = f"import sys, time; time.sleep({SMB_PAUSE}); sys.stdout.buffer.write(open(sys.argv[1], 'rb').read())"
    with (
        subprocess.Popen([sys.executable, "-c", feeder, str(pictures / "slow.png")], stdout=subprocess.PIPE) as feed,
        ThreadPoolExecutor(1) as pool,
    ):
        slow = pool.submit(put, Path("/dev/stdin"), SMB_SLOW, feed.stdout)
        pieces = (pictures / "pieces.png").read_bytes()
        for end in (len(pieces) // 3, 2 * len(pieces) // 3, len(pieces)):
            (pictures / "part.png").write_bytes(pieces[:end])
            put(pictures / "part.png", SMB_PIECES)
            time.sleep(SMB_PAUSE if end < len(pieces) else 0)
        slow.result()
    while (inbox := smbclient(vm, "scan", f"ls {SMB_FOLDER}\\*", login))[0] != 0 or SMB_SLOW in smb_names(inbox[1]):
        if time.monotonic() - started > timeout:
            return [*problems, f"{SMB_FOLDER}/{SMB_SLOW} was not taken from the inbox in {timeout:.0f} s"]
        time.sleep(2)
    put(pictures / "again.png", SMB_SLOW)  # the same name again: a new scan
    stem = SMB_SLOW.rsplit(".", 1)[0]
    wanted = sorted(f"{s}.txt" for s in (stem, f"{stem}-1", SMB_PIECES.rsplit(".", 1)[0]))
    while not set(wanted) <= (seen := smb_names(smbclient(vm, "outbox", f"ls {SMB_FOLDER}\\*", login)[1])):
        if time.monotonic() - started > timeout:
            return [*problems, f"SMB outbox {SMB_FOLDER}/ after {timeout:.0f} s holds {sorted(seen)}, not {wanted}"]
        time.sleep(3)
    result["smb_seconds"] = round(time.monotonic() - started, 1)
    got = vm.dir / "smb-outbox"
    got.mkdir(exist_ok=True)
    smbclient(vm, "outbox", f"lcd {got}; " + "; ".join(f"get {SMB_FOLDER}\\{n} {n}" for n in wanted), login)
    result["smb_outbox"] = {n: (got / n).read_text().strip() if (got / n).exists() else None for n in wanted}
    problems += [
        f"SMB outbox {SMB_FOLDER}/{name} says {text!r}, expected {OCR_TEXT!r}"
        for name, text in result["smb_outbox"].items()
        if text != OCR_TEXT
    ]
    wrong = f"{login.split('%')[0]}%not-the-password"
    refusals = (
        ("write into the outbox", ("outbox", f"put {pictures / 'again.png'} mine.png", login), "ACCESS_DENIED"),
        ("login with a wrong password", ("scan", "ls", wrong), "NT_STATUS_LOGON_FAILURE"),
        ("guest login", ("scan", "ls", None), "NT_STATUS_ACCESS_DENIED"),
        ("SMB1 client", ("scan", "ls", login, "-m", "NT1", "--option=client min protocol=NT1"), "negotiation failed"),
    )
    for what, args, expected in refusals:
        problems += smb_refused(what, smbclient(vm, *args), expected)
    return problems
