"""Scan to folder over SMB in the image: the settings, the files the app layer writes, and which of Samba's units run
(real systemctl over the project's units, the host's units standing in for the base layer's: Samba's among them)."""

from __future__ import annotations

import json
import struct

import pytest
from contexts import HOST_UNITS, enabled_links, make_ctx
from llama_fixtures import require

from imagebuilder import app
from imagebuilder.boottest import scan_checks
from imagebuilder.boottest.capture import guest_traffic
from imagebuilder.boottest.vm import GUEST_MAC, Vm
from imagebuilder.context import BuildError
from imagebuilder.settings import BY_NAME, SettingsError, resolve

LAN = ["lan=on", "lan_token=abcdefgh1"]
SMB = [*LAN, "smb=on", "smb_user=scanner", "smb_password=scan-pass-1"]


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["smb=on", "smb_user=scanner", "smb_password=scan-pass-1"], "lan is off"),
        ([*LAN, "smb=on"], "smb_user=NAME"),
        ([*LAN, "smb=on", "smb_user=scanner"], "smb_password=SECRET"),
        ([*LAN, "smb=on", "smb_user=root", "smb_password=scan-pass-1"], "system account"),
        ([*LAN, "smb=on", "smb_user=ocr", "smb_password=scan-pass-1"], "system account"),
        ([*LAN, "smb=on", "smb_user=Scan Desk", "smb_password=scan-pass-1"], "smb_user"),
        ([*LAN, "smb=on", "smb_user=scanner", "smb_password=short"], "at least 8"),
        ([*LAN, "smb=on", "smb_user=scanner", "smb_password=has'quote1"], "quotes"),
        (["smb1=on"], "smb is off"),
    ],
)
def test_smb_settings_are_checked(overrides, says):
    with pytest.raises(SettingsError, match=says):
        resolve("cpu", overrides)


def test_the_password_is_masked_and_never_in_the_runtime_config():
    c = resolve("cpu", SMB)
    assert "scan-pass-1" not in c.dump() and c.as_dict()["smb_password"] == "***"
    assert "scan-pass-1" not in json.dumps(c.image_config())
    assert "UNSAFE" in BY_NAME["smb1"].help and "WannaCry" in BY_NAME["smb1"].help


def test_generated_files(tmp_path):
    assert not any("samba" in path or "smb" in path for path in app.generated(make_ctx(tmp_path, "cpu", *LAN)))
    files = app.generated(make_ctx(tmp_path, "cpu", *SMB))
    conf = files["etc/samba/smb.conf"][0]
    for line in ("[scan]", "path = /srv/ocr/scan/inbox", "[outbox]", "path = /srv/ocr/scan/outbox"):
        assert line in conf
    assert "server min protocol = SMB2_02" in conf and "map to guest = Never" in conf
    assert "username map = /etc/samba/appliance-users.map" in conf and "force user = ocr" in conf
    assert files["etc/samba/appliance-users.map"][0].splitlines()[-1] == "ocr = scanner"
    assert files["etc/appliance/smb.env"] == ("APPLIANCE_SMB_PASSWORD=scan-pass-1\n", 0o600)
    assert not any("scan-pass-1" in text for path, (text, _) in files.items() if path != "etc/appliance/smb.env")
    old = app.generated(make_ctx(tmp_path, "cpu", *SMB, "smb1=on"))["etc/samba/smb.conf"][0]
    assert "server min protocol = NT1" in old and "ntlm auth = ntlmv1-permitted" in old


def test_smb_user_may_not_be_an_account_of_the_image(tmp_path):
    ctx = make_ctx(tmp_path, "cpu", *SMB)
    ctx.files["passwd"].write_text(ctx.files["passwd"].read_text() + "scanner:x:998:998::/:/usr/sbin/nologin\n")
    with pytest.raises(BuildError, match="system account of the image"):
        app.populate(ctx, tmp_path / "tree")


def test_samba_runs_only_with_smb_on(tmp_path):
    if not (HOST_UNITS / "smbd.service").exists():
        require("samba", "needs Samba's units on this host, as the base layer has them (apt install samba)")
    off = enabled_links(make_ctx(tmp_path / "off", "cpu", *LAN))
    for unit in ("smbd", "nmbd", "samba-ad-dc"):
        assert off[f"etc/systemd/system/{unit}.service"] == "/dev/null"
    assert not any("appliance-smb-setup" in link for link in off)
    on = enabled_links(make_ctx(tmp_path / "on", "cpu", *SMB))
    assert "etc/systemd/system/smbd.service" not in on
    assert on["etc/systemd/system/nmbd.service"] == on["etc/systemd/system/samba-ad-dc.service"] == "/dev/null"
    assert on["etc/systemd/system/systemd-networkd-wait-online.service"] == "/dev/null"  # smbd waits for no DHCP
    assert on["etc/systemd/system/multi-user.target.wants/smbd.service"].endswith("/smbd.service")
    setup = "etc/systemd/system/smbd.service.requires/appliance-smb-setup.service"
    assert on[setup] == "/usr/lib/systemd/system/appliance-smb-setup.service"


# ---- the boot test's SMB parts (the check itself runs against the real Samba in tests/scan/test_scan_smb.py) ----


def test_the_vm_forwards_smb_only_when_asked(tmp_path):
    plain = " ".join(Vm(disk=tmp_path / "a.iso", mode="bios-cd", dir=tmp_path).command())
    assert "-:445" not in plain and "-:8000" in plain
    smb = Vm(disk=tmp_path / "a.iso", mode="bios-cd", dir=tmp_path, smb_port=40445).command()
    netdev = smb[smb.index("-netdev") + 1]
    assert netdev.endswith(",hostfwd=tcp:127.0.0.1:40445-:445") and "restrict=on" in netdev


def pcap(frames: list[bytes]) -> bytes:
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    return header + b"".join(struct.pack("<IIII", 0, 0, len(f), len(f)) + f for f in frames)


def tcp_from_guest(sport: int, dport: int) -> bytes:
    guest = bytes(int(x, 16) for x in GUEST_MAC.split(":"))
    ip = bytes([0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 2, 15, 10, 0, 2, 2])
    return b"\xff" * 6 + guest + b"\x08\x00" + ip + struct.pack("!HH", sport, dport) + bytes(16)


def test_smb_replies_are_expected_traffic_only_with_the_smb_forward(tmp_path):
    path = tmp_path / "guest.pcap"
    path.write_bytes(pcap([tcp_from_guest(8000, 50000), tcp_from_guest(445, 50001)]))
    assert guest_traffic(path, allow_dhcp=True) == ["ipv4 proto=6 10.0.2.2:50001"]
    assert guest_traffic(path, allow_dhcp=True, served=(8000, 445)) == []


LISTING = """Try "help" to get a list of possible commands.
  .                                   D        0  Wed Dec  2 15:30:45 2026
  ..                                  D        0  Wed Dec  2 15:30:45 2026
  text                                D        0  Wed Dec  2 15:30:45 2026
  SCN_0001.txt                        A       15  Wed Dec  2 15:31:53 2026
  my scan 2.pdf                       AR   20480  Tue Nov  3 09:01:02 2026

\t\t264212084 blocks of size 1024. 72589980 blocks available
"""


def test_smbclient_listing_and_refusals_are_read():
    assert scan_checks.smb_names(LISTING) == {"text", "SCN_0001.txt", "my scan 2.pdf"}
    assert scan_checks.smb_names("session setup failed: NT_STATUS_LOGON_FAILURE") == set()
    denied = (1, "session setup failed: NT_STATUS_LOGON_FAILURE\n")
    assert scan_checks.smb_refused("wrong password", denied, "NT_STATUS_LOGON_FAILURE") == []
    [got_in] = scan_checks.smb_refused("wrong password", (0, LISTING), "NT_STATUS_LOGON_FAILURE")
    assert got_in.startswith("SMB wrong password: expected NT_STATUS_LOGON_FAILURE, but it got in")
    [other] = scan_checks.smb_refused("guest login", (-1, "no answer in 120 s"), "NT_STATUS_ACCESS_DENIED")
    assert "exit -1" in other and "no answer" in other


def test_the_smb_check_needs_smbclient(monkeypatch):
    monkeypatch.setattr(scan_checks.shutil, "which", lambda name: None)
    assert scan_checks.check_smb(object(), "u%p", {}, {}) == [
        "the SMB check needs smbclient on this host (apt install smbclient)"
    ]


def test_the_smb_check_names_a_missing_smbd_and_netbios_ports(tmp_path):
    """The listeners are judged before anything is sent: here the share itself does not answer either."""

    class NoShare:
        smb_port, dir = 9, tmp_path  # nothing listens on port 9

    report = {"listen": ["tcp:127.0.0.1:8000/python3/999", "udp:0.0.0.0:137/nmbd/0"]}
    problems = scan_checks.check_smb(NoShare(), "u%p", report, {}, timeout=5)
    assert problems[0].startswith("smbd is not listening on port 445")
    assert problems[1] == "NetBIOS ports open (SMB is to be on TCP 445 only): ['udp:0.0.0.0:137/nmbd/0']"
    assert problems[2].startswith("SMB share 'scan': exit 1") and len(problems) == 3


def test_the_boot_step_without_its_password_says_so(monkeypatch, capsys):
    from appliance import smb

    monkeypatch.delenv(smb.PASSWORD_ENV, raising=False)
    assert smb.main() == 1
    assert "APPLIANCE_SMB_PASSWORD is not set" in capsys.readouterr().err
