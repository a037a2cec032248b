"""Scan to folder over SMB with the real Samba: smbd runs the image's own smb.conf (`appliance.smb.smb_conf`, plus a
private port and state folders) and password setup, `smbclient` writes into the `scan` share the ways MFPs do, a real
watcher with the CPU engine turns the files into outputs, and they are read back through the read-only `outbox`.

Needs root, smbd, smbpasswd and smbclient (`make test` installs samba and smbclient): skipped without them, unless
APPLIANCE_TEST_REQUIRE names "samba". A system account (ACCOUNT) stands for the image's `ocr` and is removed after.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from llama_fixtures import free_port, require
from scan_helpers import FAST, squash, text_image

from appliance import scan, smb
from appliance.jobs import Jobs

ACCOUNT = "ocrsmbtest"
LOGIN, PASSWORD = "mfp-scanner", "scan-pass-1"


@pytest.fixture(scope="module")
def account():
    missing = [tool for tool in ("smbd", "smbpasswd", "smbclient") if not shutil.which(tool)]
    if os.geteuid() != 0 or missing:
        require(
            "samba", f"the Samba tests need root and {', '.join(missing) or 'Samba'} (apt install samba smbclient)"
        )
    made = subprocess.run(["id", ACCOUNT], capture_output=True).returncode != 0
    if made:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", ACCOUNT],
            check=True,
        )
    yield ACCOUNT
    if made:
        subprocess.run(["userdel", ACCOUNT], check=True)


class Samba:
    """smbd on a free loopback port with the image's smb.conf over `root` (a scan folder)."""

    def __init__(self, home: Path, smb1: bool = False):
        self.home, self.root, self.port = home, home / "scans", free_port()
        state = home / "state"
        state.mkdir()
        overrides = {
            "smb ports": str(self.port),
            "interfaces": "127.0.0.1",
            "bind interfaces only": "yes",
            **{key: str(state) for key in ("lock directory", "state directory", "cache directory", "private dir")},
            "pid directory": str(state),
            "ncalrpc dir": str(state / "ncalrpc"),
            "logging": "file",
            "log file": str(home / "smbd.log"),
            # Writes of 64 KiB (the SMB2 minimum), so that smbclient sends a slowly fed file in pieces.
            "smb2 max write": "65536",
        }
        self.conf = home / "smb.conf"
        self.conf.write_text(
            smb.smb_conf(self.root, home / "users.map", smb1=smb1, account=ACCOUNT, overrides=overrides)
        )
        (home / "users.map").write_text(smb.users_map(LOGIN, account=ACCOUNT))
        smb.make_task_folders(self.root, ACCOUNT)
        smb.set_password(PASSWORD, self.conf, ACCOUNT)
        log = open(home / "smbd.out", "wb")  # noqa: SIM115 - closed in stop()
        self.log = log
        self.proc = subprocess.Popen(
            ["smbd", "--foreground", "--no-process-group", "--debug-stdout", "--configfile", str(self.conf)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # smbd signals its whole process group when it stops: not pytest's
        )
        deadline = time.monotonic() + 30
        while self.client("scan", "ls").returncode != 0:
            assert self.proc.poll() is None and time.monotonic() < deadline, (home / "smbd.out").read_text()[-2000:]
            time.sleep(0.3)

    def client(self, share: str, commands: str, *options: str, user: str = f"{LOGIN}%{PASSWORD}", **kw):
        """smbclient against a share; the CompletedProcess (output in stdout, both streams)."""
        login = ["-N"] if user is None else ["-U", user]
        return subprocess.run(
            ["smbclient", f"//127.0.0.1/{share}", "-p", str(self.port), *login, *options, "-c", commands],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
            **kw,
        )

    def names(self, share: str, folder: str = "") -> set[str]:
        listing = self.client(share, f'ls "{folder}\\*"' if folder else "ls").stdout
        return {line.split()[0] for line in listing.splitlines() if line.startswith("  ") and line.split()}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


@pytest.fixture
def samba_home(account):
    """A folder every account can reach (pytest's tmp folders are root's alone)."""
    home = Path(tempfile.mkdtemp(prefix="appliance-smb-"))
    home.chmod(0o755)
    yield home
    shutil.rmtree(home)


@pytest.fixture
def samba(samba_home):
    server = Samba(samba_home)
    yield server
    server.stop()


def scan_png(home: Path, name: str, words: str) -> Path:
    """A page saved uncompressed (hundreds of KB: smbclient sends it in several writes)."""
    path = home / "pages" / name
    path.parent.mkdir(exist_ok=True)
    image = text_image([words], width=900)
    image.save(path, compress_level=0)
    return path


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
    return found


def test_mfp_files_through_the_share_come_out_in_the_read_only_outbox(samba, cpu):
    home, root = samba.home, samba.root
    assert {"text", "doc", "translate-en"} <= samba.names("scan")  # the task folders, for the MFP's share path
    jobs = Jobs(home / "jobs", lambda report: cpu)
    watcher = scan.WatcherThread(root, scan.JobsRecognizer(jobs), media_dirs=(), outputs=("txt", "pdf"), **FAST)
    try:
        # 1. A slow writer: the file created at once, then written 64 KiB at a time with a pause longer than the
        #    give-up time between the first pieces (a scanner scanning while it sends), closed at the end.
        slow = scan_png(home, "slow.png", "Slow scan 101")
        feeder = (
            "import sys, time; data = open(sys.argv[1], 'rb').read(); out = sys.stdout.buffer\n"
            "for i in range(0, len(data), 65536):\n"
            "    out.write(data[i:i + 65536]); out.flush(); time.sleep(2.5 if i < 131072 else 0.1)\n"
        )
        with subprocess.Popen(["python3", "-c", feeder, str(slow)], stdout=subprocess.PIPE) as feed:
            put = samba.client("scan", "put /dev/stdin SCN_0001.png", stdin=feed.stdout)
        assert put.returncode == 0, put.stdout
        # 2. Opened and closed several times: a PDF sent whole three times over, longer each time (prefixes of it
        #    do not open), with pauses longer than the quiet period, into the text/ folder.
        pdf = home / "pages" / "letter.pdf"
        text_image(["Letter by pieces 202"], width=900).save(pdf, resolution=150)
        data = pdf.read_bytes()
        for part in (data[: len(data) // 3], data[: 2 * len(data) // 3], data):
            (home / "pages" / "part.pdf").write_bytes(part)
            assert samba.client("scan", f"put {home / 'pages' / 'part.pdf'} text\\SCN_0002.pdf").returncode == 0
            time.sleep(1)
        # 3. The first name again, as soon as the first file left the inbox: a new scan, with outputs of its own.
        wait_for(lambda: not (root / "inbox" / "SCN_0001.png").exists(), 60, "SCN_0001.png claimed")
        again = scan_png(home, "again.png", "Second scan 303")
        assert samba.client("scan", f"put {again} SCN_0001.png").returncode == 0

        wanted = {"SCN_0001.txt", "SCN_0001.pdf", "SCN_0001-1.txt", "SCN_0001-1.pdf"}
        wait_for(lambda: wanted <= samba.names("outbox"), 300, f"{wanted} in the outbox share")
        wait_for(lambda: {"SCN_0002.txt"} <= samba.names("outbox", "text"), 300, "text/SCN_0002.txt")
    finally:
        watcher.stop()
        jobs.close()
    got = home / "got"
    got.mkdir()
    fetched = samba.client(
        "outbox", f"lcd {got}; get SCN_0001.txt; get SCN_0001-1.txt; get text\\SCN_0002.txt SCN_0002.txt"
    )
    assert fetched.returncode == 0, fetched.stdout
    assert squash((got / "SCN_0001.txt").read_text()) == "slowscan101"
    assert squash((got / "SCN_0001-1.txt").read_text()) == "secondscan303"
    assert squash((got / "SCN_0002.txt").read_text()) == "letterbypieces202"
    # Each scan read once, whole; nothing failed.
    assert (root / "done" / "SCN_0001.png").read_bytes() == slow.read_bytes()
    assert (root / "done" / "text" / "SCN_0002.pdf").read_bytes() == data
    assert not any((root / "failed").rglob("*"))
    # The outbox is read-only: no new file, no deleting the results.
    assert "NT_STATUS_ACCESS_DENIED" in samba.client("outbox", f"put {again} mine.png").stdout
    assert "NT_STATUS_ACCESS_DENIED" in samba.client("outbox", "del SCN_0001.txt").stdout
    assert (root / "outbox" / "SCN_0001.txt").exists()
    # Files the MFP wrote belong to the scan folder's account (the image's `ocr`).
    written = root / "inbox" / "owner-check.png"
    assert samba.client("scan", f"put {again} owner-check.png").returncode == 0
    assert (written.owner(), written.group()) == (ACCOUNT, ACCOUNT)


def test_wrong_password_guest_and_smb1_are_refused(samba):
    wrong = samba.client("scan", "ls", user=f"{LOGIN}%not-the-password")
    assert wrong.returncode != 0 and "NT_STATUS_LOGON_FAILURE" in wrong.stdout
    guest = samba.client("scan", "ls", user=None)
    assert guest.returncode != 0 and "NT_STATUS_ACCESS_DENIED" in guest.stdout
    guest_outbox = samba.client("outbox", "ls", user=None)
    assert guest_outbox.returncode != 0
    old = samba.client("scan", "ls", "-m", "NT1", "--option=client min protocol=NT1")
    assert old.returncode != 0 and "protocol negotiation failed" in old.stdout
    assert samba.client("scan", "ls").returncode == 0  # and the right login still gets in


def test_smb1_only_when_asked(samba_home):
    server = Samba(samba_home, smb1=True)
    try:
        old = server.client("scan", "ls", "-m", "NT1", "--option=client min protocol=NT1")
        assert old.returncode == 0, old.stdout
        assert "NT_STATUS_LOGON_FAILURE" in server.client("scan", "ls", user=f"{LOGIN}%wrong").stdout
    finally:
        server.stop()


class SambaAsVm:
    """What the boot test's SMB check uses of a Vm: the forwarded SMB port and a folder for its files."""

    def __init__(self, samba: Samba):
        self.smb_port, self.dir = samba.port, samba.home


def test_the_boot_tests_smb_check_passes_against_this_samba(samba, cpu):
    """scan_checks.check_smb, as the boot test runs it on the booted image, against the image's smb.conf here with a
    watcher of the image's timings (quiet period 3 s)."""
    from imagebuilder.boottest import scan_checks

    jobs = Jobs(samba.home / "jobs", lambda report: cpu)
    watcher = scan.WatcherThread(samba.root, scan.JobsRecognizer(jobs), media_dirs=())
    result = {}
    try:
        report = {"listen": ["tcp:127.0.0.1:8000/python3/999", "tcp:0.0.0.0:445/smbd/0"]}
        assert scan_checks.check_smb(SambaAsVm(samba), f"{LOGIN}%{PASSWORD}", report, result, timeout=180) == []
    finally:
        watcher.stop()
        jobs.close()
    assert set(result["smb_outbox"]) == {"SCN_0001.txt", "SCN_0001-1.txt", "SCN_0002.txt"}
    assert result["smb_seconds"] < 120
    assert (samba.root / "done" / "text" / "SCN_0001-1.png").exists()
