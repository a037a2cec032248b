"""What the boot test reads off the guest: the selftest line and the tail of the serial log, screenshots and the
text on them, and the frames the guest sent (the pcap).

The image reports its state on the serial console (rootfs/usr/local/lib/appliance/selftest):
    APPLIANCE-SELFTEST state=running failed=[] web=active kiosk=active browser=5 health=200 listen=[...] boots=N
"""

from __future__ import annotations

import re
import struct
import time
from pathlib import Path

from imagebuilder.boottest.vm import GUEST_MAC, Vm

MARKER = re.compile(r"APPLIANCE-SELFTEST (.*)")


def parse_marker(text: str) -> dict:
    """'state=running failed=[a b] ...' -> {'state': 'running', 'failed': ['a', 'b'], ...}"""
    out = {}
    for key, bracket, plain in re.findall(r"(\w+)=(?:\[([^\]]*)\]|(\S*))", text):
        out[key] = bracket.split() if bracket or f"{key}=[" in text else plain
    return out


# Probes that look for network scanners: LAN mode's scanner_discovery sends them when the scanner page lists
# scanners (WS-Discovery and mDNS multicast, avahi's IGMP membership reports for those groups, and SANE's pixma
# backend's Canon BJNP/MFNP broadcasts). They ask who is there; they connect to nobody.
DISCOVERY = {("239.255.255.250", 3702), ("224.0.0.251", 5353)}
DISCOVERY_BROADCAST_PORTS = {8610, 8612}
IGMP = 2


def guest_traffic(
    pcap: Path, allow_dhcp: bool, served: tuple[int, ...] = (8000,), allow_discovery: bool = False
) -> list[str]:
    """Frames the guest sent on its own: anything but ARP, DHCP and scanner discovery (LAN mode) and replies from
    the ports it serves through the forwards (8000; 445 for SMB)."""
    if not pcap.exists():
        return []
    data = pcap.read_bytes()
    if len(data) < 24:
        return []
    endian = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    mac = bytes(int(x, 16) for x in GUEST_MAC.split(":"))
    seen, pos = [], 24
    while pos + 16 <= len(data):
        _, _, incl, _ = struct.unpack(endian + "IIII", data[pos : pos + 16])
        frame = data[pos + 16 : pos + 16 + incl]
        pos += 16 + incl
        if frame[6:12] != mac:
            continue
        etype = struct.unpack("!H", frame[12:14])[0]
        if etype == 0x0806:
            continue
        if etype == 0x0800:
            ihl = (frame[14] & 0xF) * 4
            proto = frame[23]
            dst = ".".join(str(b) for b in frame[30:34])
            sport, dport = struct.unpack("!HH", frame[14 + ihl : 14 + ihl + 4]) if proto in (6, 17) else (0, 0)
            if proto == 17 and sport == 68 and dport == 67 and allow_dhcp:
                continue
            if proto == 6 and sport in served:
                continue
            if allow_discovery and (
                (proto == 17 and (dst, dport) in DISCOVERY)
                or (proto == 17 and dst.endswith(".255") and dport in DISCOVERY_BROADCAST_PORTS)
                or (proto == IGMP and dst == "224.0.0.22")
            ):
                continue
            seen.append(f"ipv4 proto={proto} {dst}:{dport}")
        else:
            seen.append(f"ethertype=0x{etype:04x}")
    return seen


def serial_tail(log: Path, lines: int = 30) -> str:
    """The end of a serial log without terminal escape sequences (GRUB and systemd draw with them)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r", "", text)
    # GRUB's menu redraws make lines thousands of characters long: cut them, so CI's tail of the log shows more.
    return "\n".join(line[:300] for line in text.splitlines()[-lines:])


def screenshot(vm: Vm, png: Path) -> bool:
    """The guest's screen as a PNG (QEMU's screendump, a PPM, converted); False when none came."""
    ppm = vm.dir / "screen.ppm"
    ppm.unlink(missing_ok=True)
    try:
        vm.monitor(f"screendump {ppm}")
        for _ in range(20):
            if ppm.exists() and ppm.stat().st_size > 0:
                break
            time.sleep(0.5)
        from PIL import Image

        Image.open(ppm).save(png)
        ppm.unlink()
        return True
    except Exception:
        return False


def wait_rendered(vm: Vm, png: Path, timeout: float) -> bool:
    """Screenshots until the screen shows more than a plain background (the page drew), bounded."""
    from PIL import Image

    deadline = time.monotonic() + timeout
    while True:
        if screenshot(vm, png):
            colors = Image.open(png).convert("RGB").getcolors(maxcolors=4096)
            if colors is None or len(colors) > 32:  # None: more than 4096 colours
                return True
        if time.monotonic() > deadline or not vm.alive():
            return False
        time.sleep(5)


def screen_text(png: Path) -> str:
    """The kiosk screenshot read by the appliance's own CPU engine, on the host."""
    from appliance.ocr.engines.select import open_engine
    from appliance.ocr.pipeline import recognize_file
    from appliance.ocr.tasks import Request

    return recognize_file(open_engine("cpu"), png, Request.make("text")).text
