"""Boot-test harness: boot an ISO in QEMU (BIOS/UEFI x CD/USB stick) and check what the appliance reports.

Every wait is bounded and every QEMU started here is ended by its own PID. Per boot we keep the serial log, a
screenshot (HMP screendump), a pcap of the guest's network (-object filter-dump) and a JSON verdict.
The image reports its state on the serial console (rootfs/usr/local/lib/appliance/selftest):
    APPLIANCE-SELFTEST state=running failed=[] web=active kiosk=active browser=5 health=200 listen=[...] boots=N
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
MODES = {"bios-cd": ("bios", "cd"), "uefi-cd": ("uefi", "cd"), "bios-usb": ("bios", "usb"),
         "uefi-usb": ("uefi", "usb")}
MARKER = re.compile(r"APPLIANCE-SELFTEST (.*)")
GUEST_MAC = "52:54:00:12:34:56"
# Every boot also gets a FAT data stick (label STICK_LABEL) holding a picture of OCR_TEXT: the image must mount it
# on /media/STICK_LABEL, show it in the in-app USB browser, and read OCR_TEXT back through POST /ocr.
OCR_TEXT = "Boot Test 2026"
STICK_LABEL = "OCRTEST"
STICK_FILE = "boot-test.png"
STICK_DEVICE = "datastick"  # its QEMU device id, to pull it with device_del
# The stick is also a scan-folder stick: the image must OCR OCR-INBOX/INBOX_FILE into OCR-OUTBOX/<stem>.txt.
INBOX_FILE = "inbox-scan.png"
OUTBOX_TEXT = f"OCR-OUTBOX/{INBOX_FILE.rsplit('.', 1)[0]}.txt"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
# What the kiosk screen must show (read off the screenshot by our own CPU engine): the UI's navigation, so neither
# an error page nor a blank browser passes.
KIOSK_TEXT = ("OCR appliance", "New scan")
NO_GPU_BANNER = "No NVIDIA graphics card"  # appliance.gpu.REASONS["no_card"], in the kiosk's banner


def accel() -> list[str]:
    """KVM only where it really is hardware KVM: KVM-PVM (a software nested hypervisor) hangs firmware and GRUB."""
    forced = os.environ.get("APPLIANCE_QEMU_ACCEL")
    if forced == "tcg":
        return ["-accel", "tcg,thread=multi", "-cpu", "max"]
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    hardware = bool(re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.M))
    usable = os.access("/dev/kvm", os.R_OK | os.W_OK) and not Path("/sys/module/kvm_pvm").exists()
    if forced == "kvm" or (usable and hardware):
        return ["-enable-kvm", "-cpu", "host"]
    return ["-accel", "tcg,thread=multi", "-cpu", "max"]


def text_png(text: str, width: int = 900) -> bytes:
    """Black DejaVu Sans on white, large and clean: what the CPU engine must read back exactly. The boot test
    draws each of its pictures at another width, so no request is answered from the result cache."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (width, 160), "white")
    ImageDraw.Draw(image).text((40, 40), text, fill="black", font=ImageFont.truetype(FONT, 56))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# The data stick's filesystem: FAT (every stick), or what sticks formatted on Windows carry. The host may have no
# kernel driver for exFAT/NTFS, so those are written and read through a loop device and FUSE (root only).
STICK_TOOLS = {  # filesystem -> (format command, FUSE mount command, Debian packages)
    "exfat": (["mkfs.exfat", "-L", STICK_LABEL], ["mount.exfat-fuse"], "exfatprogs exfat-fuse"),
    "ntfs": (["mkntfs", "-F", "-Q", "-L", STICK_LABEL], ["ntfs-3g"], "ntfs-3g"),
}
PARTITION_START = 2**20  # exFAT/NTFS sticks come partitioned, as Windows formats them: one partition at 1 MiB


@contextlib.contextmanager
def partition_device(image: Path):
    """A loop device on the stick image's partition, for as long as the `with` lasts."""
    loop = subprocess.run(["losetup", "-f", "--show", "-o", str(PARTITION_START), str(image)], check=True,
                          capture_output=True, text=True).stdout.strip()
    try:
        yield loop
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)


@contextlib.contextmanager
def fuse_mounted(image: Path, fs: str, read_only: bool = False):
    """An exFAT/NTFS stick image's partition mounted on a temporary folder for as long as the `with` lasts."""
    mount = STICK_TOOLS[fs][1] + (["-o", "ro"] if read_only else [])
    with partition_device(image) as loop, tempfile.TemporaryDirectory(prefix="stick-") as folder:
        subprocess.run([*mount, loop, folder], check=True, capture_output=True)
        try:
            yield Path(folder)
        finally:
            subprocess.run(["umount", folder], check=True)


def require_stick_tools(fs: str) -> None:
    tools = STICK_TOOLS.get(fs.removesuffix("-dirty"), ())
    missing = [tool[0] for tool in tools[:2] if not shutil.which(tool[0])]
    if missing:
        raise RuntimeError(f"an {fs} data stick needs {', '.join(missing)} on this host (apt-get install "
                           f"{tools[2]}), and root for its loop device")


def mark_ntfs_dirty(image: Path) -> None:
    """Set the "dirty" flag of the NTFS partition in `image`, as a stick pulled without ejecting from Windows keeps
    it: in $Volume's VOLUME_INFORMATION, in the MFT and in its mirror (which must match)."""
    with image.open("r+b") as f:
        f.seek(PARTITION_START)
        boot = f.read(512)
        cluster = struct.unpack_from("<H", boot, 0x0B)[0] * boot[0x0D]
        per_record = struct.unpack_from("<b", boot, 0x40)[0]  # clusters, or -log2(bytes) when negative
        record_size = cluster * per_record if per_record > 0 else 1 << -per_record
        for lcn_at in (0x30, 0x38):  # $MFT, $MFTMirr
            offset = PARTITION_START + struct.unpack_from("<q", boot, lcn_at)[0] * cluster + 3 * record_size
            f.seek(offset)
            record = bytearray(f.read(record_size))
            at = struct.unpack_from("<H", record, 0x14)[0]  # first attribute
            while (kind := struct.unpack_from("<I", record, at)[0]) != 0x70:  # VOLUME_INFORMATION
                if kind == 0xFFFFFFFF:
                    raise RuntimeError(f"{image}: no VOLUME_INFORMATION in $Volume")
                at += struct.unpack_from("<I", record, at + 4)[0]
            flags = at + struct.unpack_from("<H", record, at + 0x14)[0] + 10  # value: 8 reserved, major, minor, flags
            record[flags] |= 0x01  # VOLUME_IS_DIRTY
            f.seek(offset)
            f.write(record)


def data_stick(path: Path, fs: str = "vfat") -> Path:
    """A stick image with STICK_FILE at its root and INBOX_FILE in its scan inbox: 16 MiB of FAT, no partition
    table, through mtools (no mount, no root); or 32 MiB with one exFAT/NTFS partition, through a FUSE mount."""
    path.unlink(missing_ok=True)
    files = {}
    for width, name in ((940, STICK_FILE), (980, f"OCR-INBOX/{INBOX_FILE}")):
        png = path.with_name(f"{path.stem}-{width}.png")
        png.write_bytes(text_png(OCR_TEXT, width))
        files[name] = png
    if fs == "vfat":
        subprocess.run(["mkfs.vfat", "-C", "-n", STICK_LABEL, str(path), "16384"], check=True, capture_output=True)
        for name, png in files.items():
            if "/" in name:
                subprocess.run(["mmd", "-D", "s", "-i", str(path), f"::/{name.rsplit('/', 1)[0]}"], check=True)
            subprocess.run(["mcopy", "-i", str(path), str(png), f"::/{name}"], check=True)
        return path
    with path.open("wb") as f:
        f.truncate(32 * 2**20)
    table = f"label: dos\nstart={PARTITION_START // 512}, type=7\n"  # 7: the MBR type for NTFS and exFAT
    subprocess.run(["sfdisk", "-q", str(path)], input=table.encode(), check=True, capture_output=True)
    base_fs = fs.removesuffix("-dirty")
    with partition_device(path) as loop:
        subprocess.run([*STICK_TOOLS[base_fs][0], loop], check=True, capture_output=True)
    with fuse_mounted(path, base_fs) as root:
        for name, png in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, root / name)
    if fs == "ntfs-dirty":
        mark_ntfs_dirty(path)
    return path


def stick_text(path: Path, name: str, fs: str = "vfat") -> str | None:
    """A file's text read back from the stick image after the guest is gone."""
    if fs == "vfat":  # mtools: no mount needed
        proc = subprocess.run(["mtype", "-i", str(path), f"::/{name}"], check=False, capture_output=True)
        return proc.stdout.decode("utf-8", "replace") if proc.returncode == 0 else None
    with fuse_mounted(path, fs, read_only=True) as root:
        try:
            return (root / name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Vm:
    disk: Path
    mode: str
    dir: Path
    stick: Path | None = None  # a second USB disk (not bootable): the data stick
    entry: str = "normal"  # the boot menu entry to start (boot.ENTRIES)
    memory_mb: int = 3072
    port: int = field(default_factory=free_port)
    pid: int | None = None
    started: float = 0.0

    @property
    def serial_log(self) -> Path:
        return self.dir / "serial.log"

    def __post_init__(self) -> None:
        # Absolute paths: a daemonized QEMU runs in /, so a relative screendump path would land there.
        self.dir = self.dir.resolve()
        self.disk = self.disk.resolve()
        self.stick = self.stick.resolve() if self.stick else None

    def command(self) -> list[str]:
        firmware, medium = MODES[self.mode]
        d = self.dir
        cmd = ["qemu-system-x86_64", "-machine", "q35", *accel(), "-smp", "2", "-m", str(self.memory_mb),
               "-vga", "std", "-display", "none", "-no-reboot",
               # A socket (to pick a boot menu entry by typing to GRUB) that also logs everything to serial.log.
               "-chardev", f"socket,id=ser0,path={d / 'serial.sock'},server=on,wait=off,logfile={self.serial_log}",
               "-serial", "chardev:ser0",
               "-monitor", f"unix:{d / 'monitor.sock'},server,nowait",
               "-daemonize", "-pidfile", str(d / "qemu.pid"),
               # restrict=on: the guest cannot reach anything, yet the pcap still shows every attempt it makes.
               "-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{self.port}-:8000",
               "-device", "virtio-net-pci,netdev=net0",
               "-object", f"filter-dump,id=dump0,netdev=net0,file={d / 'guest.pcap'}"]
        if firmware == "uefi":
            vars_copy = d / "OVMF_VARS.fd"
            shutil.copyfile(OVMF_VARS, vars_copy)
            cmd += ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                    "-drive", f"if=pflash,format=raw,file={vars_copy}"]
        usb = []  # (drive id, image, extra device options)
        if medium == "cd":
            cmd += ["-drive", f"file={self.disk},media=cdrom,readonly=on,if=none,id=cd0",
                    "-device", "ide-cd,drive=cd0,bootindex=0"]
        else:
            usb.append(("stick0", self.disk, ",bootindex=0"))
        if self.stick:
            usb.append(("data0", self.stick, f",id={STICK_DEVICE}"))
        if usb:
            cmd += ["-device", "qemu-xhci,id=xhci"]
        for drive, image, extra in usb:
            cmd += ["-drive", f"file={image},format=raw,if=none,id={drive}",
                    "-device", f"usb-storage,bus=xhci.0,drive={drive},removable=on{extra}"]
        return cmd

    def start(self) -> None:
        import subprocess

        self.dir.mkdir(parents=True, exist_ok=True)
        for name in ("serial.log", "qemu.pid", "monitor.sock", "serial.sock", "guest.pcap"):
            (self.dir / name).unlink(missing_ok=True)
        cmd = self.command()
        (self.dir / "qemu-cmd.txt").write_text(" ".join(cmd) + "\n")
        self.started = time.monotonic()
        subprocess.run(cmd, check=True, timeout=60)
        self.pid = int((self.dir / "qemu.pid").read_text().strip())
        if self.entry != "normal":
            self.choose_entry()

    def choose_entry(self) -> None:
        """Type to GRUB on the serial line while its menu counts down: Ctrl-N once per entry down, then Enter."""
        from appliance.build import boot

        if not self.wait_serial(re.compile(r"executed automatically"), 120, poll=0.2):
            raise RuntimeError("the boot menu did not show on the serial console")
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.dir / "serial.sock"))
            # One key at a time: GRUB redraws the menu over the slow serial line after each, and a burst lost the
            # Enter once. Enter is sent three times (GRUB prints nothing when it boots on a key press, so there is
            # nothing to wait for); once the kernel runs, nothing reads the serial line.
            for _ in range(boot.ENTRIES.index(self.entry)):
                s.sendall(b"\x0e")
                time.sleep(1)
            for _ in range(3):
                s.sendall(b"\r")
                time.sleep(3)

    def alive(self) -> bool:
        if self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
            return True
        except ProcessLookupError:
            return False

    def wait_serial(self, pattern: re.Pattern, timeout: float, poll: float = 2) -> re.Match | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive():
            if self.serial_log.exists():
                m = pattern.search(self.serial_log.read_text(errors="replace"))
                if m:
                    return m
            time.sleep(poll)
        return None

    def monitor(self, command: str, timeout: float = 20) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(str(self.dir / "monitor.sock"))
            s.recv(4096)  # banner
            s.sendall(command.encode() + b"\n")
            time.sleep(1)
            try:
                return s.recv(65536).decode(errors="replace")
            except socket.timeout:
                return ""

    def screenshot(self, png: Path) -> bool:
        ppm = self.dir / "screen.ppm"
        ppm.unlink(missing_ok=True)
        try:
            self.monitor(f"screendump {ppm}")
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

    def wait_rendered(self, png: Path, timeout: float) -> bool:
        """Screenshots until the screen shows more than a plain background (the page drew), bounded."""
        from PIL import Image

        deadline = time.monotonic() + timeout
        while True:
            if self.screenshot(png):
                colors = Image.open(png).convert("RGB").getcolors(maxcolors=4096)
                if colors is None or len(colors) > 32:  # None: more than 4096 colours
                    return True
            if time.monotonic() > deadline or not self.alive():
                return False
            time.sleep(5)

    def http(self, path: str, token: str | None = None, timeout: float = 5, body: dict | None = None
             ) -> tuple[int, bytes]:
        """(status, body) of a GET, or a JSON POST when `body` is given; status 0 when nothing answered."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError:
            return 0, b""

    def stop(self, grace: float = 30) -> None:
        """Power off politely, then end our QEMU by its PID."""
        if not self.alive():
            return
        try:
            self.monitor("system_powerdown", timeout=5)
        except OSError:
            pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self.alive():
            time.sleep(1)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not self.alive():
                break
            os.kill(self.pid, sig)
            time.sleep(2)


def parse_marker(text: str) -> dict:
    """'state=running failed=[a b] ...' -> {'state': 'running', 'failed': ['a', 'b'], ...}"""
    out = {}
    for key, bracket, plain in re.findall(r"(\w+)=(?:\[([^\]]*)\]|(\S*))", text):
        out[key] = bracket.split() if bracket or f"{key}=[" in text else plain
    return out


def guest_traffic(pcap: Path, allow_dhcp: bool) -> list[str]:
    """Frames the guest sent on its own: anything but ARP, DHCP (LAN mode) and replies from its port 8000."""
    if not pcap.exists():
        return []
    data = pcap.read_bytes()
    if len(data) < 24:
        return []
    endian = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    mac = bytes(int(x, 16) for x in GUEST_MAC.split(":"))
    seen, pos = [], 24
    while pos + 16 <= len(data):
        _, _, incl, _ = struct.unpack(endian + "IIII", data[pos:pos + 16])
        frame = data[pos + 16:pos + 16 + incl]
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
            sport, dport = struct.unpack("!HH", frame[14 + ihl:14 + ihl + 4]) if proto in (6, 17) else (0, 0)
            if proto == 17 and sport == 68 and dport == 67 and allow_dhcp:
                continue
            if proto == 6 and sport == 8000:
                continue
            seen.append(f"ipv4 proto={proto} {dst}:{dport}")
        else:
            seen.append(f"ethertype=0x{etype:04x}")
    return seen


def check_ocr(vm: Vm, token: str, result: dict) -> list[str]:
    """Through the port forward: a picture of OCR_TEXT must come back as OCR_TEXT (CPU engine)."""
    problems = []
    sent = time.monotonic()
    status, body = vm.http("/ocr", token, timeout=420, body={
        "image": base64.b64encode(text_png(OCR_TEXT, 900)).decode(), "task_type": "plain_ocr"})
    result["ocr_request_seconds"] = round(time.monotonic() - sent, 1)
    result["seconds_to_first_ocr"] = round(time.monotonic() - vm.started, 1)
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {}
    result["ocr"] = {"status": status, "text": answer.get("text"), "engine": (answer.get("engine") or {}).get("name")}
    if status != 200 or (answer.get("text") or "").strip() != OCR_TEXT:
        problems.append(f"POST /ocr: {status} {answer.get('text') or body[:200]!r}, expected {OCR_TEXT!r}")
    return problems


def usb_names(vm: Vm, token: str, path: str) -> list[str] | None:
    _, body = vm.http(f"/usb/list?path={path}", token, timeout=30)
    try:
        return [e["name"] for e in json.loads(body)["entries"]]
    except (ValueError, KeyError, TypeError):
        return None


def check_scan_stick(vm: Vm, token: str, result: dict, timeout: float = 300) -> list[str]:
    """The stick's OCR-INBOX scan goes through the scan folder: its .txt lands in OCR-OUTBOX on the stick (the text
    itself is read back from the stick image after shutdown, see boot_once)."""
    started = time.monotonic()
    while True:
        status, body = vm.http("/scan", token, timeout=30)
        try:
            states = {f["name"]: f["state"] for f in json.loads(body)["files"] if f.get("source") == STICK_LABEL}
        except (ValueError, KeyError, TypeError):
            states = {}
        if states.get(INBOX_FILE) in ("done", "failed"):
            break
        if time.monotonic() - started > timeout:
            return [f"the scan folder did not finish {INBOX_FILE} from the stick in {timeout:.0f}s: {status} "
                    f"{body[:300]!r}"]
        time.sleep(3)
    if states[INBOX_FILE] != "done":
        return [f"the scan folder failed {INBOX_FILE} from the stick: {body[:300]!r}"]
    result["scan_stick_seconds"] = round(time.monotonic() - started, 1)
    return []


def check_read_only_stick(vm: Vm, token: str, result: dict, timeout: float = 120) -> list[str]:
    """A stick the image could mount read-only only: the scan page lists it as read-only and the scan folder leaves
    its OCR-INBOX alone (its files can still be OCR'd from the UI: check_ui_usb_upload)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        status, body = vm.http("/scan", token, timeout=30)
        try:
            scan = json.loads(body)
            sticks = {s["label"]: s.get("read_only") for s in scan["sticks"]}
        except (ValueError, KeyError, TypeError):
            sticks = {}
        if STICK_LABEL in sticks:
            result["stick_read_only"] = sticks[STICK_LABEL]
            taken = [f["name"] for f in scan.get("files", []) if f.get("source") == STICK_LABEL]
            if not sticks[STICK_LABEL] or taken:
                return [f"the dirty NTFS stick: read_only={sticks[STICK_LABEL]}, scan folder took {taken}"]
            return []
        time.sleep(3)
    return [f"the scan page never listed the read-only stick {STICK_LABEL}: {status} {body[:300]!r}"]


def check_ui_usb_upload(vm: Vm, token: str, shots: Path, result: dict) -> list[str]:
    """The web UI in a real browser (host Chromium through the forward, as a LAN user): log in with the token, pick
    STICK_FILE in the in-app USB browser, run plain text OCR, and see OCR_TEXT on the result page."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return ["the UI check needs playwright (pip install -e '.[dev]')"]
    browser_path = shutil.which("chromium") or "/usr/bin/chromium"
    base = f"http://127.0.0.1:{vm.port}"
    started = time.monotonic()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 800}, locale="en-US")
                page.goto(base + "/login", timeout=60_000)
                page.fill("input[name=token]", token)
                page.click("button[type=submit]")
                page.wait_for_selector("#usb-open", timeout=60_000)
                page.click("#usb-open")
                page.click(f"#usb-list button:has-text('{STICK_LABEL}')")
                page.click(f"#usb-list button:has-text('{STICK_FILE}')")
                page.check("input[value=text]", force=True)
                page.click("#start")
                page.wait_for_selector("#out-text", timeout=300_000)
                shown = page.locator("#out-text").inner_text().strip()
                # The scanned page itself must show under its boxes (the guest may still be rasterising it).
                # (polled from here: wait_for_function would evaluate a string, which the page's CSP forbids)
                for _ in range(120):
                    if page.locator("img").evaluate_all("imgs => imgs.every(i => i.complete && i.naturalWidth > 0)"):
                        break
                    time.sleep(1)
                else:
                    raise TimeoutError("the page image did not load within 120 s")
                page.screenshot(path=str(shots / "ui-usb-upload.png"), full_page=True)
            finally:
                browser.close()
    except Exception as e:  # playwright's errors say which step timed out
        return [f"UI upload from the USB browser failed: {type(e).__name__}: {str(e).splitlines()[0]}"]
    result["ui_usb_upload"] = {"text": shown, "seconds": round(time.monotonic() - started, 1)}
    return [] if shown == OCR_TEXT else [f"UI upload from the USB browser showed {shown!r}, expected {OCR_TEXT!r}"]


def check_usb(vm: Vm, token: str, result: dict, pull: bool) -> list[str]:
    """The data stick shows in the in-app USB browser; pulled (`pull`), it goes (unmounted, its folder removed).
    Without `pull` the guest's clean shutdown unmounts it, so what the scan folder wrote is read back whole."""
    names = usb_names(vm, token, STICK_LABEL)
    result["usb_listing"] = names
    if STICK_FILE not in (names or []):
        return [f"the data stick is not in the USB browser: /usb/list?path={STICK_LABEL} -> {names}"]
    if not pull:
        return []
    # Pull the stick: the image must unmount it and drop /media/STICK_LABEL (a stale mount point would stay listed).
    vm.monitor(f"device_del {STICK_DEVICE}")
    deadline = time.monotonic() + 90
    # (None: no answer yet, keep asking; [] is an answer: no stick left)
    while (left := usb_names(vm, token, "")) is None or STICK_LABEL in left:
        if time.monotonic() > deadline:
            result["usb_removed_cleanly"] = False
            inside = usb_names(vm, token, STICK_LABEL)  # the dead mount's files, or an empty leftover folder
            return [f"/media/{STICK_LABEL} still there after the stick was pulled: {left}; it holds {inside}"]
        time.sleep(2)
    result["usb_removed_cleanly"] = True
    return []


# What each boot menu entry must have done, judged from the selftest line.
ENTRY_CHECKS = {
    "normal": lambda r: not r.get("cmdline") or f"unexpected kernel flags {r.get('cmdline')}",
    "toram": lambda r: ("toram" in r.get("cmdline", []) and r.get("medium_device") == "0")
    or f"toram: cmdline {r.get('cmdline')}, boot device still mounted: {r.get('medium_device')}",
    "safe": lambda r: "nomodeset" in r.get("cmdline", []) or f"safe graphics: cmdline {r.get('cmdline')}",
    "verify": lambda r: r.get("verified") == "ok" or f"medium check: {r.get('verified')}",
}


def gpu_fallback_problems(report: dict, kiosk_text: str) -> list[str]:
    """A gpu image booted without an NVIDIA card (QEMU has none): its NVIDIA units skipped by their ExecCondition,
    not failed; the CPU engine serving; the kiosk's banner saying why. [] for a cpu image (no `gpu` units)."""
    units = dict(item.split(":", 1) for item in report.get("gpu", []))
    if not units:
        return []
    problems = [f"{unit} unit: Result={result}, expected exec-condition (skipped without a GPU)"
                for unit, result in units.items() if result != "exec-condition"]
    if report.get("engine") != "cpu":
        problems.append(f"engine {report.get('engine')}, expected the CPU fallback")
    if NO_GPU_BANNER not in kiosk_text:
        problems.append(f"the kiosk screen does not say why the GPU is not used ({NO_GPU_BANNER!r})")
    return problems


def split_mode(mode: str) -> tuple[str, str]:
    """'bios-cd:safe' -> ('bios-cd', 'safe'); 'uefi-usb' -> ('uefi-usb', 'normal')."""
    from appliance.build.boot import ENTRIES

    base, _, entry = mode.partition(":")
    entry = entry or "normal"
    if base not in MODES or entry not in ENTRIES:
        raise SystemExit(f"unknown mode {mode}: choose from {', '.join(MODES)}, "
                         f"optionally with :{'|:'.join(ENTRIES)}")
    return base, entry


def serial_tail(log: Path, lines: int = 30) -> str:
    """The end of a serial log without terminal escape sequences (GRUB and systemd draw with them)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r", "", text)
    # GRUB's menu redraws make lines thousands of characters long: cut them, so CI's tail of the log shows more.
    return "\n".join(line[:300] for line in text.splitlines()[-lines:])


def loopback_only(listener: str) -> bool:
    """'tcp:127.0.0.1:8000/appliance/1001' (or an older image's '127.0.0.1:8000/appliance') -> True."""
    address = listener.split(":", 1)[1] if listener.startswith(("tcp:", "udp:")) else listener
    return address.startswith(("127.0.0.1:", "[::1]:"))


def screen_text(png: Path) -> str:
    """The kiosk screenshot read by the appliance's own CPU engine, on the host."""
    from appliance.ocr.engines import open_engine
    from appliance.ocr.pipeline import recognize_file
    from appliance.ocr.tasks import Request

    return recognize_file(open_engine("cpu"), png, Request.make("text")).text


def boot_once(disk: Path, mode: str, out: Path, timeout: float, token: str | None, lan: bool,
              stick: Path | None = None, pull_stick: bool = False, stick_fs: str = "vfat") -> dict:
    base, entry = split_mode(mode)
    vm = Vm(disk=disk, mode=base, dir=out, stick=stick, entry=entry)
    result = {"mode": mode, "ok": False}
    try:
        try:
            vm.start()
        except RuntimeError as error:  # the boot menu never showed: a failed boot, not a crash of the harness
            result["error"] = str(error)
            return result
        m = vm.wait_serial(MARKER, timeout)
        result["seconds_to_selftest"] = round(time.monotonic() - vm.started, 1)
        if not m:
            result["error"] = "no APPLIANCE-SELFTEST line on the serial console within the timeout"
            result["screenshot"] = vm.screenshot(out / "screen.png")  # what the screen showed, for the CI artifacts
            return result
        report = parse_marker(m.group(1))
        result["selftest"] = report
        health = 0
        if lan:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and health != 200:
                health = vm.http("/health", token)[0]
                if health != 200:
                    time.sleep(2)
            result["health_via_forward"] = health
            result["seconds_to_health"] = round(time.monotonic() - vm.started, 1)
        result["kiosk_rendered"] = vm.wait_rendered(out / "screen.png", timeout=300)
        result["seconds_to_render"] = round(time.monotonic() - vm.started, 1)
        # The first drawn frame may be a page half painted (the start screen reloading into the form): read again.
        deadline = time.monotonic() + 60
        while result["kiosk_rendered"]:
            result["kiosk_text"] = screen_text(out / "screen.png")[:1000]
            if all(words in result["kiosk_text"] for words in KIOSK_TEXT) or time.monotonic() > deadline:
                break
            time.sleep(5)
            vm.screenshot(out / "screen.png")
        api_problems = []
        if lan and health == 200:
            api_problems += check_ocr(vm, token, result)
            if stick:
                scan_check = check_read_only_stick if stick_fs.endswith("-dirty") else check_scan_stick
                api_problems += scan_check(vm, token, result)
                api_problems += check_ui_usb_upload(vm, token, out, result)
                api_problems += check_usb(vm, token, result, pull_stick)  # pulls the stick: last
        vm.screenshot(out / "screen-end.png")
        problems = api_problems
        if stick and report.get("media") != [STICK_LABEL]:
            problems.append(f"/media holds {report.get('media')}, expected only the data stick [{STICK_LABEL}]")
        verdict = ENTRY_CHECKS[entry](report)
        if verdict is not True:
            problems.append(verdict)
        if report.get("state") != "running":
            problems.append(f"systemd state {report.get('state')}")
        if report.get("failed"):
            problems.append(f"failed units {report['failed']}")
        if report.get("kiosk") != "active" or report.get("browser", "0") in ("0", ""):
            problems.append("kiosk browser not running")
        if not result["kiosk_rendered"]:
            problems.append("the kiosk screen stayed blank (see screen.png)")
        elif not all(words in result["kiosk_text"] for words in KIOSK_TEXT):
            problems.append(f"the kiosk screen does not show the UI: {result['kiosk_text'][:120]!r}")
        problems += gpu_fallback_problems(report, result.get("kiosk_text", ""))
        if report.get("health") != "200":
            problems.append(f"/health inside the guest: {report.get('health')}")
        if lan and health != 200:
            problems.append(f"/health through the port forward: {health}")
        if not lan and not all(loopback_only(a) for a in report.get("listen", [])):
            problems.append(f"listening beyond loopback: {report['listen']}")
        result["problems"] = problems
        result["ok"] = not problems
        return result
    finally:
        vm.stop()
        if stick and "scan_stick_seconds" in result:  # the scan folder's .txt, as the guest left it on the stick
            text = (stick_text(stick, OUTBOX_TEXT, stick_fs) or "").strip()
            result["scan_stick_text"] = text
            if text != OCR_TEXT:
                result["ok"] = False
                result.setdefault("problems", []).append(f"{OUTBOX_TEXT} on the stick holds {text!r}")
        result["outbound"] = guest_traffic(out / "guest.pcap", allow_dhcp=lan)
        if result["outbound"]:
            result["ok"] = False
            result.setdefault("problems", []).append(f"guest sent {len(result['outbound'])} unexpected frames")
        (out / "result.json").write_text(json.dumps(result, indent=1))


def usb_stick(iso: Path, dest: Path, persistence_mb: int = 256) -> Path:
    """A raw stick image: a copy of the build's own .img (usb_image=on) when it sits beside the ISO, else the ISO
    as dd writes it plus a `persistence` partition."""
    from appliance.build.usb import add_persistence

    img = iso.with_suffix(".img")
    shutil.copyfile(img if img.exists() else iso, dest)
    if not img.exists():
        add_persistence(dest, persistence_mb, dest.parent)
    return dest


def boot_test(iso: Path, modes: list[str], artifacts: Path, timeout: int = 600, lan_token: str | None = None,
              persistence: bool = False, pull_stick: bool = False, stick_fs: str = "vfat") -> int:
    """Boot `iso` in each mode; print one line per boot; 0 if every boot passed."""
    artifacts.mkdir(parents=True, exist_ok=True)
    lan = bool(lan_token)
    results = []
    stick = None
    for mode in modes:
        base, _ = split_mode(mode)
        disk = iso
        if MODES[base][1] == "usb":
            stick = stick or usb_stick(iso, artifacts / "stick.img")
            disk = stick
        print(f"boot {mode} ({' '.join(accel())}) ...", flush=True)
        out = artifacts / mode.replace(":", "-")
        out.mkdir(exist_ok=True)
        data = data_stick(out / "data-stick.img", stick_fs)  # fresh per boot: its inbox is consumed
        r = boot_once(disk, mode, out, timeout, lan_token, lan, stick=data, pull_stick=pull_stick, stick_fs=stick_fs)
        results.append(r)
        print(f"  {mode}: {'PASS' if r['ok'] else 'FAIL'} selftest after {r.get('seconds_to_selftest')}s"
              + (f", health after {r.get('seconds_to_health')}s" if lan else "")
              + (f", first OCR after {r.get('seconds_to_first_ocr')}s" if r.get("seconds_to_first_ocr") else "")
              + (f"; {'; '.join(r.get('problems', []))}" if r.get("problems") else "")
              + (f"; {r['error']}" if r.get("error") else ""), flush=True)
        if not r["ok"]:  # CI shows this; the whole log, screen.png and the pcap are in `out`
            print(f"  --- end of {out / 'serial.log'} ---\n{serial_tail(out / 'serial.log')}\n  ---", flush=True)
    if persistence and stick:
        # Every USB boot above appended to /srv/ocr/.boot-log on the stick's persistence partition.
        usb_boots = [r for r in results if MODES[split_mode(r["mode"])[0]][1] == "usb" and r.get("selftest")]
        counts = [int(r["selftest"].get("boots") or 0) for r in usb_boots]
        ok = len(counts) >= 2 and counts == list(range(1, len(counts) + 1))
        print(f"  persistence: {'PASS' if ok else 'FAIL'} boot counts on the stick {counts}", flush=True)
        results.append({"mode": "persistence", "ok": ok, "boots": counts})
    (artifacts / "summary.json").write_text(json.dumps(results, indent=1))
    failed = [r for r in results if not r["ok"]]
    for r in failed:  # again at the very end: CI keeps only the tail of a long log
        print(f"FAILED {r['mode']}: {'; '.join(r.get('problems') or [r.get('error') or 'see summary.json'])}",
              flush=True)
    return 0 if results and not failed else 1
