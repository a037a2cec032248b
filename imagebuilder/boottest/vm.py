"""The boot test's virtual PC: QEMU with BIOS or UEFI firmware, booting the image from a CD or a USB stick.

Every QEMU started here is ended by its own PID. The guest's port 8000 (and SMB's 445, when asked) is forwarded to a
free loopback port; its serial console goes to serial.log and to a socket (to pick a GRUB entry), its network to a
pcap (capture.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from imagebuilder.boot import ENTRIES, MENU
from imagebuilder.usb import add_persistence

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# mode -> (firmware, medium). Every medium but the CD is a USB stick; which stick is made from the ISO how:
# "usb" the build's .img (or the ISO plus a persistence partition), the others as writers leave them (writers.py:
# "raw" dd/Etcher/Rufus DD, "filecopy" Rufus ISO mode, "loopback" a Ventoy-style exFAT stick with the ISO file).
MODES = {
    "bios-cd": ("bios", "cd"),
    "uefi-cd": ("uefi", "cd"),
    "bios-usb": ("bios", "usb"),
    "uefi-usb": ("uefi", "usb"),
    "bios-raw": ("bios", "raw"),
    "uefi-raw": ("uefi", "raw"),
    "uefi-filecopy": ("uefi", "filecopy"),  # BIOS needs the writer's own boot code (Rufus's): not made here
    "bios-loopback": ("bios", "loopback"),
    "uefi-loopback": ("uefi", "loopback"),
}
WRITER_MODES = tuple(mode for mode, (_, medium) in MODES.items() if medium not in ("cd", "usb"))
GUEST_MAC = "52:54:00:12:34:56"
STICK_DEVICE = "datastick"  # the data stick's QEMU device id, to pull it with device_del
DEBUG_SHELL_ARG = " systemd.debug_shell=ttyS1"  # systemd-debug-generator: a root shell on that tty (systemd >= 243)


# QEMU 7.2's TCG emulates AVX2/FMA wrongly: onnxruntime (the CPU engine) and Chromium's renderer fault or hang in
# those kernels, so the emulated CPU goes without them (the software keeps its SSE paths).
TCG = ["-accel", "tcg,thread=multi", "-cpu", "max,-avx2,-fma,-avx512f"]


def accel() -> list[str]:
    """KVM only where it really is hardware KVM: KVM-PVM (a software nested hypervisor) hangs firmware and GRUB."""
    forced = os.environ.get("APPLIANCE_QEMU_ACCEL")
    if forced == "tcg":
        return TCG
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    hardware = bool(re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.M))
    usable = os.access("/dev/kvm", os.R_OK | os.W_OK) and not Path("/sys/module/kvm_pvm").exists()
    if forced == "kvm" or (usable and hardware):
        return ["-enable-kvm", "-cpu", "host"]
    return TCG


def split_mode(mode: str) -> tuple[str, str]:
    """'bios-cd:safe' -> ('bios-cd', 'safe'); 'uefi-usb' -> ('uefi-usb', 'normal')."""
    base, _, entry = mode.partition(":")
    entry = entry or "normal"
    if base not in MODES or entry not in ENTRIES:
        raise SystemExit(
            f"unknown mode {mode}: choose from {', '.join(MODES)}, optionally with :{'|:'.join(ENTRIES)}"
        )
    return base, entry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Vm:
    """One QEMU, daemonized, booting `disk` in `mode` (a MODES key); its sockets, logs and pcap live in `dir`."""

    disk: Path
    mode: str
    dir: Path
    stick: Path | None = None  # a second USB disk (not bootable): the data stick
    # Ventoy's persistence .dat, as the block device its plugin maps the file to (device-mapper, not USB): virtio
    ventoy_dat: Path | None = None
    entry: str = "normal"  # the boot menu entry to start (imagebuilder.boot.ENTRIES)
    # A root shell for the harness on a second serial port (ttyS1): systemd's own debug shell, asked for by typing
    # DEBUG_SHELL_ARG into the boot menu entry's kernel line at GRUB. The image itself is not changed.
    debug_shell: bool = False
    memory_mb: int = 3072
    port: int = field(default_factory=free_port)
    smb_port: int | None = None  # a host port forwarded to the guest's SMB port 445 (images built with smb=on)
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
        self.ventoy_dat = self.ventoy_dat.resolve() if self.ventoy_dat else None

    def command(self) -> list[str]:
        firmware, medium = MODES[self.mode]
        d = self.dir
        cmd = [
            "qemu-system-x86_64",
            "-machine",
            "q35",
            *accel(),
            "-smp",
            "2",
            "-m",
            str(self.memory_mb),
            "-vga",
            "std",
            "-display",
            "none",
            "-no-reboot",
            # A socket (to pick a boot menu entry by typing to GRUB) that also logs everything to serial.log.
            "-chardev",
            f"socket,id=ser0,path={d / 'serial.sock'},server=on,wait=off,logfile={self.serial_log}",
            "-serial",
            "chardev:ser0",
            *(
                ["-chardev", f"socket,id=ser1,path={d / 'shell.sock'},server=on,wait=off", "-serial", "chardev:ser1"]
                if self.debug_shell
                else []
            ),
            "-monitor",
            f"unix:{d / 'monitor.sock'},server,nowait",
            "-daemonize",
            "-pidfile",
            str(d / "qemu.pid"),
            # restrict=on: the guest cannot reach anything, yet the pcap still shows every attempt it makes.
            "-netdev",
            f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{self.port}-:8000"
            + (f",hostfwd=tcp:127.0.0.1:{self.smb_port}-:445" if self.smb_port else ""),
            "-device",
            "virtio-net-pci,netdev=net0",
            "-object",
            f"filter-dump,id=dump0,netdev=net0,file={d / 'guest.pcap'}",
        ]
        if firmware == "uefi":
            vars_copy = d / "OVMF_VARS.fd"
            shutil.copyfile(OVMF_VARS, vars_copy)
            cmd += [
                "-drive",
                f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                "-drive",
                f"if=pflash,format=raw,file={vars_copy}",
            ]
        usb = []  # (drive id, image, extra device options)
        if medium == "cd":
            cmd += [
                "-drive",
                f"file={self.disk},media=cdrom,readonly=on,if=none,id=cd0",
                "-device",
                "ide-cd,drive=cd0,bootindex=0",
            ]
        else:
            usb.append(("stick0", self.disk, ",bootindex=0"))
        if self.stick:
            usb.append(("data0", self.stick, f",id={STICK_DEVICE}"))
        if self.ventoy_dat:
            cmd += [
                "-drive",
                f"file={self.ventoy_dat},format=raw,if=none,id=vtoydat",
                "-device",
                "virtio-blk-pci,drive=vtoydat",
            ]
        if usb:
            cmd += ["-device", "qemu-xhci,id=xhci"]
        for drive, image, extra in usb:
            cmd += [
                "-drive",
                f"file={image},format=raw,if=none,id={drive}",
                "-device",
                f"usb-storage,bus=xhci.0,drive={drive},removable=on{extra}",
            ]
        return cmd

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in ("serial.log", "qemu.pid", "monitor.sock", "serial.sock", "shell.sock", "guest.pcap"):
            (self.dir / name).unlink(missing_ok=True)
        cmd = self.command()
        (self.dir / "qemu-cmd.txt").write_text(" ".join(cmd) + "\n")
        self.started = time.monotonic()
        subprocess.run(cmd, check=True, timeout=60)
        self.pid = int((self.dir / "qemu.pid").read_text().strip())
        if self.entry != "normal" or self.debug_shell:
            self.choose_entry()

    def choose_entry(self) -> None:
        """Type to GRUB on the serial line while its menu counts down: Ctrl-N once per entry down, then Enter; or,
        for the debug shell, `e` to edit the entry, down to its `linux` line, Ctrl-E (end of line), the argument,
        Ctrl-X (boot)."""
        if not self.wait_serial(re.compile(r"executed automatically"), 120, poll=0.2):
            raise RuntimeError("the boot menu did not show on the serial console")
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.dir / "serial.sock"))
            # One key at a time: GRUB redraws the menu over the slow serial line after each, and a burst lost the
            # Enter once. Enter is sent three times (GRUB prints nothing when it boots on a key press, so there is
            # nothing to wait for); once the kernel runs, nothing reads the serial line.
            for key in self.grub_keys():
                s.sendall(key)
                time.sleep(3 if key in (b"\r", b"\x18") else 1 if key in (b"\x0e", b"e") else 0.2)

    def grub_keys(self) -> list[bytes]:
        """The keys choose_entry types, one at a time."""
        keys = [b"\x0e"] * ENTRIES.index(self.entry)
        if not self.debug_shell:
            return keys + [b"\r"] * 3
        # The editor shows `setparams 'title'` and an empty line first, then the entry's own commands before `linux`
        # (seen on screen: GRUB 2.06 with imagebuilder.boot's grub.cfg).
        down = 2 + (1 if MENU[ENTRIES.index(self.entry)][3] else 0)
        typed = [bytes([c]) for c in DEBUG_SHELL_ARG.encode()]
        return keys + [b"e", *[b"\x0e"] * down, b"\x05", *typed, *[b"\x18"] * 3]

    def shell(self, command: str, timeout: float = 60) -> tuple[int, str]:
        """(exit status, output) of `command` in the guest's root debug shell (debug_shell=True); status -1 when
        it did not finish in time. Output is read between two markers, so the tty's echo of the command is skipped."""
        tag = f"{time.monotonic_ns():x}"
        # The markers are printed by printf from pieces, so the echoed command line never contains them whole.
        line = f"{command}; printf '%s-%s %s\\n' END {tag} $?\n".encode()
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(str(self.dir / "shell.sock"))
            s.sendall(f"printf '%s-%s\\n' BEGIN {tag}\n".encode() + line)
            seen = b""
            deadline = time.monotonic() + timeout
            end = re.compile(rf"BEGIN-{tag}\r?\n(.*)END-{tag} (\d+)".encode(), re.S)
            while time.monotonic() < deadline:
                try:
                    seen += s.recv(65536)
                except TimeoutError:
                    break
                m = end.search(seen)
                if m:
                    return int(m.group(2)), m.group(1).decode(errors="replace")
        return -1, seen.decode(errors="replace")[-2000:]

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
            except TimeoutError:
                return ""

    def http(
        self, path: str, token: str | None = None, timeout: float = 5, body: dict | None = None
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


def usb_stick(iso: Path, dest: Path, persistence_mb: int = 256) -> Path:
    """A raw stick image: a copy of the build's own .img (usb_image=on) when it sits beside the ISO, else the ISO
    as dd writes it plus a `persistence` partition."""
    img = iso.with_suffix(".img")
    shutil.copyfile(img if img.exists() else iso, dest)
    if not img.exists():
        add_persistence(dest, persistence_mb, dest.parent)
    return dest
