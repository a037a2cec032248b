"""Scan to folder from an office MFP over SMB (LAN mode with `--set smb=on`): the Samba configuration the image ships
and the boot step that gives Samba its password.

Two shares over the scan folder: `scan` is its inbox, writable, with the task subfolders made at boot (so an MFP can
be pointed at scan/text, scan/doc ...); `outbox` is its outbox, read-only. The MFP logs in as `smb_user`, which a
username map turns into the account that runs the scan folder (`ocr`): Samba writes the files as that account, the
owner the watcher's readiness check needs (`appliance.scan.watcher.open_for_writing`), and no second account exists.
No guest access, no printers, no NetBIOS; SMB2 and SMB3 only unless `smb1` is on (see SMB1_WARNING).

The builder writes smb.conf and the map from `smb_conf` / `users_map` (imagebuilder/app.py); at boot
appliance-smb-setup.service runs `python3 -m appliance.smb` as root, before smbd: the password comes from the
root-only environment file, never from a command line.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

from appliance.runtime import SCAN_DIR
from appliance.scan.folders import FOLDERS

ACCOUNT = "ocr"  # runs the web app and the scan folder; every SMB login becomes this account
SHARES = {"scan": "inbox", "outbox": "outbox"}  # share -> folder of the scan folder
CONF = Path("/etc/samba/smb.conf")
USERS_MAP = Path("/etc/samba/appliance-users.map")
PASSWORD_ENV = "APPLIANCE_SMB_PASSWORD"  # set from /etc/appliance/smb.env (root-only) by the setup unit
SMB1_WARNING = (
    "SMB1 (NT1) has no protection against tampering or downgrade, was the way WannaCry and NotPetya spread, and "
    "needs the weaker NTLMv1 logins that many SMB1-only MFPs use; allow it only for an older MFP that cannot do "
    "SMB2, on a network you trust"
)


def smb_conf(
    scan_dir: Path = SCAN_DIR,
    users_map: Path = USERS_MAP,
    smb1: bool = False,
    account: str = ACCOUNT,
    overrides: dict | None = None,
) -> str:
    """smb.conf for the two shares. `overrides`: [global] lines to add or replace (the tests' private port and
    folders)."""
    settings = {
        "server role": "standalone server",
        "workgroup": "WORKGROUP",
        "server string": "OCR appliance",
        "security": "user",
        "passdb backend": "tdbsam",
        "username map": str(users_map),
        # Nobody without the password: no guest, no anonymous listing of shares or users.
        "map to guest": "Never",
        "restrict anonymous": "2",
        "server min protocol": "NT1" if smb1 else "SMB2_02",
        "ntlm auth": "ntlmv1-permitted" if smb1 else "ntlmv2-only",
        # TCP 445 only: no NetBIOS name service or session port, no printers, no home folders.
        "disable netbios": "yes",
        "smb ports": "445",
        "load printers": "no",
        "printing": "bsd",
        "printcap name": "/dev/null",
        "disable spoolss": "yes",
        "smb1 unix extensions": "no",
        "logging": "systemd",
        "log level": "1",
        **(overrides or {}),
    }
    share = {
        "guest ok": "no",
        "valid users": account,
        "force user": account,
        "force group": account,
        "follow symlinks": "no",
        "wide links": "no",
    }
    sections = {
        "global": settings,
        "scan": {
            "comment": "Scans in: the folder picks the task",
            "path": str(scan_dir / SHARES["scan"]),
            "read only": "no",
            "create mask": "0640",
            "directory mask": "0750",
            **share,
        },
        "outbox": {
            "comment": "Results: searchable PDF, text, Markdown, JSON",
            "path": str(scan_dir / SHARES["outbox"]),
            "read only": "yes",
            **share,
        },
    }
    lines = ["# Written by the image builder (appliance/smb.py): scan to folder over SMB.", ""]
    for name, values in sections.items():
        lines += [f"[{name}]", *(f"   {key} = {value}" for key, value in values.items()), ""]
    return "\n".join(lines)


def users_map(smb_user: str, account: str = ACCOUNT) -> str:
    """Samba's username map: the MFP's login name becomes the scan folder's account."""
    return f"# Written by the image builder (appliance/smb.py): SMB login -> account.\n{account} = {smb_user}\n"


def make_task_folders(scan_dir: Path = SCAN_DIR, account: str = ACCOUNT) -> None:
    """The inbox with one folder per task, and the outbox, owned by `account` (the shares show them to MFPs)."""
    entry = pwd.getpwnam(account)
    folders = [scan_dir, scan_dir / "outbox", scan_dir / "inbox", *(scan_dir / "inbox" / f for f in FOLDERS if f)]
    for folder in folders:
        if not folder.is_dir():
            folder.mkdir(mode=0o750)
            os.chown(folder, entry.pw_uid, entry.pw_gid)


def set_password(password: str, conf: Path = CONF, account: str = ACCOUNT) -> None:
    """Samba's password for `account` (added or changed), given on stdin: never in a command line."""
    subprocess.run(
        ["smbpasswd", "-c", str(conf), "-s", "-a", account],
        input=f"{password}\n{password}\n",
        text=True,
        check=True,
        capture_output=True,
    )


def main() -> int:
    """At boot, as root, before smbd: the task folders and the password (from the environment)."""
    password = os.environ.get(PASSWORD_ENV)
    if not password:
        print(f"{PASSWORD_ENV} is not set (/etc/appliance/smb.env): SMB logins would fail", file=sys.stderr)
        return 1
    make_task_folders()
    try:
        set_password(password)
    except subprocess.CalledProcessError as error:
        print(f"smbpasswd failed: {error.stderr.strip() or error.returncode}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
