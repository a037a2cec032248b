"""The boot test's data stick: a USB disk image holding a picture of OCR_TEXT, for the image to mount, list in the
in-app USB browser, OCR from there, and take through its scan folder (OCR-INBOX -> OCR-OUTBOX).

FAT (every stick), or what sticks formatted on Windows carry (exFAT, NTFS, NTFS left dirty). The host may have no
kernel driver for exFAT/NTFS, so those are written and read through a loop device and FUSE (root only).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

# Every boot gets a data stick (label STICK_LABEL) holding a picture of OCR_TEXT: the image must mount it on
# /media/STICK_LABEL, show it in the in-app USB browser, and read OCR_TEXT back through POST /ocr.
OCR_TEXT = "Boot Test 2026"
STICK_LABEL = "OCRTEST"
STICK_FILE = "boot-test.png"
# The stick is also a scan-folder stick: the image must OCR OCR-INBOX/INBOX_FILE into OCR-OUTBOX/<stem>.txt.
INBOX_FILE = "inbox-scan.png"
OUTBOX_TEXT = f"OCR-OUTBOX/{INBOX_FILE.rsplit('.', 1)[0]}.txt"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def text_png(text: str, width: int = 900) -> bytes:
    """Black DejaVu Sans on white, large and clean: what the CPU engine must read back exactly. The boot test
    draws each of its pictures at another width, so no request is answered from the result cache."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (width, 160), "white")
    ImageDraw.Draw(image).text((40, 40), text, fill="black", font=ImageFont.truetype(FONT, 56))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# A real, full page (issue 18): an A4 letter at 150 dpi (1240x1754), a dozen lines of ordinary text in two sizes,
# the kind of page people scan. The boot test reads it back through the jobs API and checks the text.
LETTER_LINES = (
    ("Northfield Water Authority", 44),
    ("Customer Services, 14 Mill Lane, Northfield NF2 8QT", 26),
    ("Account number 4471 2093 Invoice 2026-118", 26),
    ("Dear Ms Alvarez,", 30),
    ("Thank you for your letter of 12 November about the reading", 30),
    ("taken at your property on 3 October. We have checked the", 30),
    ("meter and found that the reading was entered as 18432", 30),
    ("instead of 14832. Your account has been corrected and the", 30),
    ("balance of 63.40 will be refunded within ten working days.", 30),
    ("If you have any questions, please call 0800 555 0199", 30),
    ("between 8am and 6pm, Monday to Friday.", 30),
    ("Yours sincerely,", 30),
    ("Daniel Okafor, Billing Team", 30),
)
LETTER_TEXT = "\n".join(line for line, _ in LETTER_LINES)


def letter_png(width: int = 1240) -> bytes:
    """LETTER_LINES typeset on an A4 page at 150 dpi, black on white, as a PNG (another width: other bytes, so the
    result cache cannot answer it)."""
    from PIL import Image, ImageDraw, ImageFont

    page = Image.new("RGB", (width, 1754), "white")
    draw, y = ImageDraw.Draw(page), 150
    for line, size in LETTER_LINES:
        draw.text((120, y), line, fill="black", font=ImageFont.truetype(FONT, size))
        y += int(size * 2.2)
    buf = io.BytesIO()
    page.save(buf, format="PNG")
    return buf.getvalue()


STICK_TOOLS = {  # filesystem -> (format command, FUSE mount command, Debian packages)
    "exfat": (["mkfs.exfat", "-L", STICK_LABEL], ["mount.exfat-fuse"], "exfatprogs exfat-fuse"),
    "ntfs": (["mkntfs", "-F", "-Q", "-L", STICK_LABEL], ["ntfs-3g"], "ntfs-3g"),
}
PARTITION_START = 2**20  # exFAT/NTFS sticks come partitioned, as Windows formats them: one partition at 1 MiB


@contextlib.contextmanager
def partition_device(image: Path, size: int | None = None):
    """A loop device on the stick image's partition (at PARTITION_START; to the end of the image, or `size`
    bytes), for as long as the `with` lasts."""
    limit = ["--sizelimit", str(size)] if size else []
    loop = subprocess.run(
        ["losetup", "-f", "--show", "-o", str(PARTITION_START), *limit, str(image)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    try:
        yield loop
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)


@contextlib.contextmanager
def fuse_mounted(image: Path, fs: str, read_only: bool = False, size: int | None = None):
    """An exFAT/NTFS stick image's partition mounted on a temporary folder for as long as the `with` lasts."""
    mount = STICK_TOOLS[fs][1] + (["-o", "ro"] if read_only else [])
    with partition_device(image, size) as loop, tempfile.TemporaryDirectory(prefix="stick-") as folder:
        subprocess.run([*mount, loop, folder], check=True, capture_output=True)
        try:
            yield Path(folder)
        finally:
            subprocess.run(["umount", folder], check=True)


def require_stick_tools(fs: str) -> None:
    tools = STICK_TOOLS.get(fs.removesuffix("-dirty"), ())
    missing = [tool[0] for tool in tools[:2] if not shutil.which(tool[0])]
    if missing:
        raise RuntimeError(
            f"an {fs} data stick needs {', '.join(missing)} on this host (apt-get install "
            f"{tools[2]}), and root for its loop device"
        )


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
