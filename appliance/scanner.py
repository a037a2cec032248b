"""Scanners through SANE's own front-end, `scanimage` (sane-utils): find them, read what each offers, scan pages into
a scan (a folder of pages), and make one multi-page TIFF of a scan for the job queue.

- One program drives a scanner at a time: each run holds a lock file per device (flock), so the kiosk, an API client
  and anything else on this machine never fight over one scanner (SANE answers "Device busy" to programs that
  do not take the lock).
- Nothing scanned is lost: scanimage writes each page under `<name>.part` and renames it when it is whole, so a jam,
  an open cover, a pulled cable or a cancel keeps every page finished before it, and a restart of the web app finds
  its scans again on disk.
- A cancel stops the run after the page being scanned now: scanimage asks before each page (--batch-prompt) and is
  answered until the cancel. SIGINT alone does not end its batch: scanimage cancels that one page and goes on with
  the next, and sane-airscan, cancelled while it waits for a page, starts a new job (the feeder goes on feeding).
  SIGINT is sent only while a page's data is being read, where it ends the run cleanly.
- Devices are listed afresh on each request: a scanner plugged in after boot shows up (udev gives the `scanner`
  group access to it; the web app's user is in that group).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from appliance.messages import Text

log = logging.getLogger("appliance.scanner")

SCANIMAGE = "scanimage"
LIST_TIMEOUT = 40  # sane-airscan waits a few seconds for network scanners to answer
OPTIONS_TIMEOUT = 40
STALL_SECONDS = 300  # a run that shows no progress this long is stopped: the scanner stopped answering
EXIT_GRACE = 10  # seconds scanimage gets to exit after its batch ended, before it is killed (its pages are whole)
CANCEL_GRACE = 15  # seconds scanimage gets to cancel cleanly (SIGINT: sane_cancel) before it is killed
DEFAULT_RESOLUTION = 300  # dpi: what OCR wants for ordinary print
PREVIEW_RESOLUTION = 75
RESOLUTION_CHOICES = (150, 200, 300, 400, 600)  # offered where a scanner takes any value in a range
PAGE_PATTERN = "page-%04d.png"
PREVIEW = "preview.png"

# scanimage exits with the SANE status of what stopped it (sane/sane.h); these are the ones a person can act on.
STATUS_TEXT = {
    2: "scanner_cancelled",
    3: "scanner_busy",
    6: "scanner_jammed",
    7: "scanner_no_paper",
    8: "scanner_cover_open",
    9: "scanner_io_error",
    10: "scanner_no_memory",
    11: "scanner_denied",
}
# The first line of scanimage's prompt before each page (its last line differs: Debian 12's 1.1.1 says "Press Ctrl + D
# to terminate.", Debian 13's 1.3.1 "Press Ctrl + D (EOF) to terminate."). An early answer waits in the pipe.
PROMPT = "Place document no. "
# sane_strstatus()'s words for those statuses, as scanimage prints them ("scanimage: sane_read: Document feeder
# jammed")
STATUS_WORDS = {
    "Operation was cancelled": 2,
    "Device busy": 3,
    "Document feeder jammed": 6,
    "Document feeder out of documents": 7,
    "Scanner cover is open": 8,
    "Error during device I/O": 9,
    "Out of memory": 10,
    "Access to resource has been denied": 11,
}
OPTION_LINE = re.compile(r"^\s+--(source|mode|resolution)[ =](.+?) \[([^\]]*)\]\s*$")


class ScannerError(Exception):
    """A scanner could not be used (gone, refused, failed): a Text for a person."""


class ScannerBusy(ScannerError):
    """Another scan is running on this scanner."""


class ScanNotFound(LookupError):
    """No scan (or page) with that id."""


@dataclass(frozen=True)
class Scanner:
    device: str  # SANE's device name, e.g. "airscan:e0:Canon MF743C" or "epson2:libusb:001:004"
    vendor: str
    model: str
    kind: str  # "flatbed scanner", "virtual device", ...

    @property
    def label(self) -> str:
        return " ".join(part for part in (self.vendor, self.model) if part and part != "Noname") or self.device

    def to_dict(self) -> dict:
        return {
            "device": self.device,
            "label": self.label,
            "vendor": self.vendor,
            "model": self.model,
            "kind": self.kind,
        }


@dataclass(frozen=True)
class Choices:
    """What a scanner offers for the three settings the scan page shows (empty: it has no such option)."""

    sources: tuple[str, ...] = ()
    modes: tuple[str, ...] = ()
    resolutions: tuple[int, ...] = ()
    source: str | None = None  # the defaults the page preselects
    mode: str | None = None
    resolution: int | None = None

    def to_dict(self) -> dict:
        return {
            "sources": [{"name": s, "feeder": is_feeder(s), "duplex": "duplex" in s.lower()} for s in self.sources],
            "modes": list(self.modes),
            "resolutions": list(self.resolutions),
            "source": self.source,
            "mode": self.mode,
            "resolution": self.resolution,
        }


def is_feeder(source: str | None) -> bool:
    """A sheet feeder (several pages per run) rather than the glass (one page per run)."""
    return bool(source and re.search(r"adf|feeder|duplex", source, re.I))


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([SCANIMAGE, *args], capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise ScannerError(Text("scanner_no_sane")) from None
    except subprocess.TimeoutExpired:
        raise ScannerError(Text("scanner_timeout", seconds=int(timeout))) from None


def find_scanners(timeout: float = LIST_TIMEOUT) -> list[Scanner]:
    """The scanners SANE finds now (USB, and network scanners where discovery is on)."""
    done = _run(["--formatted-device-list=%d\t%v\t%m\t%t%n"], timeout)
    scanners = []
    for line in done.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 4 and parts[0]:
            scanners.append(Scanner(*parts))
    return scanners


def read_choices(device: str, timeout: float = OPTIONS_TIMEOUT) -> Choices:
    """Sources, colour modes and resolutions of one scanner, from `scanimage --all-options`."""
    done = _run([f"--device-name={device}", "--all-options"], timeout)
    if done.returncode != 0:
        raise ScannerError(failure(done.returncode, done.stderr, device))
    return parse_choices(done.stdout)


def parse_choices(text: str) -> Choices:
    found: dict[str, tuple[list[str], str]] = {}
    for line in text.splitlines():
        match = OPTION_LINE.match(line)
        if match and match.group(1) not in found and match.group(3) != "inactive":
            found[match.group(1)] = ([v for v in match.group(2).split("|") if v], match.group(3))
    sources, source = found.get("source", ([], None))
    modes, mode = found.get("mode", ([], None))
    resolutions = _resolutions(found["resolution"][0]) if "resolution" in found else ()
    gray = next((m for m in modes if m.lower() in ("gray", "grey", "grayscale", "greyscale")), None)
    return Choices(
        sources=tuple(sources),
        modes=tuple(modes),
        resolutions=resolutions,
        source=source if source in sources else (sources[0] if sources else None),
        mode=gray or (mode if mode in modes else (modes[0] if modes else None)),  # grey: what OCR needs, smaller
        resolution=min(resolutions, key=lambda r: abs(r - DEFAULT_RESOLUTION)) if resolutions else None,
    )


def _resolutions(values: list[str]) -> tuple[int, ...]:
    """'75|150|300dpi' -> (75, 150, 300); '50..1200dpi (in steps of 1)' -> the usual values inside the range."""
    text = "|".join(values)
    span = re.match(r"\s*(\d+(?:\.\d+)?)\.\.(\d+(?:\.\d+)?)", text)
    if span:
        low, high = float(span.group(1)), float(span.group(2))
        return tuple(r for r in RESOLUTION_CHOICES if low <= r <= high)
    return tuple(sorted({int(float(v)) for v in re.findall(r"\d+(?:\.\d+)?", text) if float(v) >= 50}))


def failure(returncode: int, stderr: str, device: str) -> Text:
    """What a failed scanimage run means for a person: its SANE status, or the device could not be opened."""
    said = [line.strip().removeprefix("scanimage: ") for line in stderr.splitlines() if line.startswith("scanimage:")]
    opened = next((line for line in said if line.startswith("open of device")), None)
    if opened:  # unplugged, switched off, or a network scanner that went away
        return Text("scanner_gone", device=device, detail=opened)
    code = STATUS_TEXT.get(returncode)
    if code:
        return Text(code)
    return Text("scanner_failed", status=returncode, detail=said[-1] if said else "-")


def said_status(stderr: str) -> int:
    """The SANE status of the last "scanimage: sane_...: <words>" line (0: none said)."""
    found = re.findall(r"scanimage: sane_\w+: (.+)", stderr)
    return next((STATUS_WORDS[w.strip()] for w in reversed(found) if w.strip() in STATUS_WORDS), 0)


@dataclass
class Run:
    """One scanimage process writing pages into a scan's folder."""

    process: subprocess.Popen
    lock: int  # the device's lock file, held until the run ends
    preview: bool
    pages_before: int  # pages the scan had when this run started
    started: float = field(default_factory=time.monotonic)
    progress: float = 0.0  # percent of the current page
    reading: bool = False  # the current page's data is being read (SIGINT stops it cleanly)
    last_change: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    batch_ended: bool = False  # scanimage said "Batch terminated": every page it will write is on disk


@dataclass
class Scan:
    """A folder of scanned pages on its way to becoming one job, and the run filling it (if any)."""

    id: str
    folder: Path
    device: str = ""
    run: Run | None = None
    error: Text | None = None
    note: Text | None = None  # how the last run ended when that is worth saying (cancelled, feeder empty)

    def pages(self) -> list[Path]:
        return sorted(p for p in self.folder.glob("page-*.png") if p.is_file())

    def page(self, number: int) -> Path:
        """Page `number` (1-based); 0 is the preview."""
        if number == 0 and (self.folder / PREVIEW).is_file():
            return self.folder / PREVIEW
        pages = self.pages()
        if not 1 <= number <= len(pages):
            raise ScanNotFound(Text("scan_page_not_found", n=number))
        return pages[number - 1]

    def to_dict(self) -> dict:
        run = self.run
        return {
            "id": self.id,
            "device": self.device,
            "state": "scanning" if run else ("failed" if self.error else "ready"),
            "preview_running": bool(run and run.preview),
            "pages": len(self.pages()),
            "preview": (self.folder / PREVIEW).is_file(),
            "progress": round(run.progress, 1) if run else None,
            "error": self.error.to_dict() if self.error else None,
            "error_text": str(self.error) if self.error else None,
            "note": self.note.to_dict() if self.note else None,
        }


class Scans:
    """The scans of this machine, in `root` (one folder each); at most `max_pages` pages per scan (one job's)."""

    def __init__(self, root: Path, max_pages: int = 300):
        self.root = Path(root)
        self.max_pages = max_pages
        self.lock = threading.Lock()
        self.scans: dict[str, Scan] = {}
        (self.root / ".locks").mkdir(parents=True, exist_ok=True)
        for folder in sorted(self.root.iterdir()):  # scans from before a restart: their pages are still there
            if folder.is_dir() and not folder.name.startswith("."):
                for part in folder.glob("*.part"):
                    part.unlink()  # a page cut short by the restart
                self.scans[folder.name] = Scan(folder.name, folder, _read_device(folder))

    def get(self, scan_id: str) -> Scan:
        scan = self.scans.get(scan_id)
        if scan is None:
            raise ScanNotFound(Text("scan_not_found", id=scan_id))
        return scan

    def new(self) -> Scan:
        scan_id = uuid.uuid4().hex[:12]
        folder = self.root / scan_id
        folder.mkdir()
        with self.lock:
            self.scans[scan_id] = scan = Scan(scan_id, folder)
        return scan

    def start(
        self,
        scan: Scan,
        device: str,
        source: str | None = None,
        resolution: int | None = None,
        mode: str | None = None,
        preview: bool = False,
    ) -> Scan:
        """Start scanimage for `scan` (more pages, or the preview) in the background; ScannerBusy when this scan
        or this scanner is already scanning."""
        with self.lock:
            if scan.run is not None:
                raise ScannerBusy(Text("scanner_busy_here"))
            room = self.max_pages - len(scan.pages())
            if room <= 0 and not preview:
                raise ScannerError(Text("scan_full", limit=self.max_pages))
            lock = self._lock_device(device)
            try:
                args = [f"--device-name={device}", "--format=png", "--progress", "--batch-prompt"]
                if source:
                    args.append(f"--source={source}")
                if mode:
                    args.append(f"--mode={mode}")
                args.append(
                    f"--resolution={PREVIEW_RESOLUTION if preview else int(resolution or DEFAULT_RESOLUTION)}"
                )
                if preview:
                    args += [f"--batch={scan.folder}/preview-%d.png", "--batch-count=1"]
                else:
                    first = _next_number(scan)
                    count = room if is_feeder(source) else 1  # the glass holds one page
                    args += [
                        f"--batch={scan.folder}/{PAGE_PATTERN}",
                        f"--batch-start={first}",
                        f"--batch-count={count}",
                    ]
                process = subprocess.Popen(
                    [SCANIMAGE, *args],
                    stdin=subprocess.PIPE,  # one line per page: go on (see the module's docstring)
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    start_new_session=True,  # the web app's own signals do not reach it
                )
            except FileNotFoundError:
                os.close(lock)
                raise ScannerError(Text("scanner_no_sane")) from None
            except BaseException:
                os.close(lock)
                raise
            scan.device, scan.error, scan.note = device, None, None
            (scan.folder / ".device").write_text(device)
            scan.run = Run(process, lock, preview, len(scan.pages()))
        threading.Thread(target=self._follow, args=(scan,), name=f"scan-{scan.id}", daemon=True).start()
        log.info("scan %s: %s %s", scan.id, device, " ".join(args[2:]))
        return scan

    def _lock_device(self, device: str) -> int:
        path = self.root / ".locks" / (hashlib.sha256(device.encode()).hexdigest()[:16] + ".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ScannerBusy(Text("scanner_busy_other")) from None
        return fd

    def _follow(self, scan: Scan) -> None:
        """Read scanimage's progress until it ends; then record how it ended and free the scanner."""
        run = scan.run
        threading.Thread(target=self._watch_stall, args=(scan, run), daemon=True).start()
        said = tail = ""
        for chunk in iter(lambda: run.process.stderr.read1(4096), b""):
            piece = chunk.decode(errors="replace")
            # "Progress: 26.6%" repeated, no line ends, while a page is read; "Scanning page N" before it and
            # "Scanned page N." after it
            for percent in re.findall(r"Progress: ([\d.]+)%|Scann(?:ing|ed) page", piece):
                run.progress, run.reading = (float(percent), True) if percent else (0.0, False)
            for _ in range((tail + piece).count(PROMPT)):
                self._answer(run)
            tail = (tail + piece)[-len(PROMPT) + 1 :]
            run.last_change = time.monotonic()
            said = (said + piece)[-8000:]
            if "Batch terminated" in said and not run.batch_ended:
                run.batch_ended = True
                threading.Timer(EXIT_GRACE, self._kill, args=(run,)).start()
        returncode = run.process.wait()
        run.process.stdin.close()
        self._finish(scan, run, returncode, re.sub(r"Progress: [\d.]+%", "", said))

    def _finish(self, scan: Scan, run: Run, returncode: int, stderr: str) -> None:
        for part in scan.folder.glob("*.part"):
            part.unlink()
        if run.preview:
            made = sorted(scan.folder.glob("preview-*.png"))
            if made:
                os.replace(made[-1], scan.folder / PREVIEW)
        if returncode < 0 and run.batch_ended:  # hung on its way out after its pages (SANE's test backend does)
            returncode = said_status(stderr)  # and was ended: the status it printed stands for its exit status
        with self.lock:
            if run.cancelled:
                scan.note = Text("scanner_cancelled")
            elif returncode == 7 and len(scan.pages()) > run.pages_before:
                pass  # the feeder ran empty after its pages: the normal end of a stack
            elif returncode != 0 and scan.error is None:
                scan.error = failure(returncode, stderr, scan.device)
            scan.run = None
            os.close(run.lock)
        log.info("scan %s: ended (exit %s), %d page(s)", scan.id, returncode, len(scan.pages()))

    def _watch_stall(self, scan: Scan, run: Run) -> None:
        while run.process.poll() is None:
            time.sleep(5)
            if time.monotonic() - run.last_change > STALL_SECONDS and run.process.poll() is None:
                log.warning("scan %s: no progress for %d s; stopping scanimage", scan.id, STALL_SECONDS)
                self._stop(run)
                scan.error = Text("scanner_stalled", seconds=STALL_SECONDS)

    @staticmethod
    def _answer(run: Run) -> None:
        """Answer scanimage's prompt before a page: go on, or (cancelled) end of input, which ends its batch."""
        try:
            if run.cancelled:
                run.process.stdin.close()
            else:
                run.process.stdin.write(b"\n")
                run.process.stdin.flush()
        except (OSError, ValueError):  # it has ended, or the cancel closed its input
            pass

    def cancel(self, scan: Scan) -> None:
        """Stop the running scan after the page being scanned (at once while that page's data is being read);
        the pages finished before it stay. Returns at once unless it stopped a page being read."""
        run = scan.run
        if run is not None:
            run.cancelled = True
            self._answer(run)  # no next page
            if run.reading:
                self._stop(run)

    @staticmethod
    def _stop(run: Run) -> None:
        try:
            os.killpg(run.process.pid, signal.SIGINT)  # scanimage cancels the scanner and deletes the partial page
            run.process.wait(CANCEL_GRACE)
        except subprocess.TimeoutExpired:
            os.killpg(run.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    @staticmethod
    def _kill(run: Run) -> None:
        if run.process.poll() is None:
            log.warning("scanimage %d did not exit after its batch; ending it", run.process.pid)
            try:
                os.killpg(run.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def remove_page(self, scan: Scan, number: int) -> None:
        if scan.run is not None:
            raise ScannerBusy(Text("scanner_busy_here"))
        scan.page(number).unlink()

    def delete(self, scan: Scan) -> None:
        run = scan.run
        self.cancel(scan)
        if run is not None:
            run.process.wait()
        with self.lock:
            self.scans.pop(scan.id, None)
        shutil.rmtree(scan.folder, ignore_errors=True)

    def as_tiff(self, scan: Scan) -> Path:
        """The scan's pages as one multi-page TIFF (lossless, deflate), written page by page into its folder."""
        from PIL import Image, TiffImagePlugin

        pages = self.pages_or_error(scan)
        out = scan.folder / "scan.tif"
        tmp = out.with_suffix(".tif.tmp")
        with TiffImagePlugin.AppendingTiffWriter(tmp, new=True) as tiff:
            for page in pages:
                with Image.open(page) as image:
                    image.save(tiff, format="TIFF", compression="tiff_adobe_deflate", dpi=image.info.get("dpi"))
                tiff.newFrame()
        os.replace(tmp, out)
        return out

    def pages_or_error(self, scan: Scan) -> list[Path]:
        if scan.run is not None:
            raise ScannerBusy(Text("scanner_busy_here"))
        pages = scan.pages()
        if not pages:
            raise ValueError(Text("scan_no_pages"))  # the request's fault, not the scanner's
        return pages

    def close(self) -> None:
        """Stop every running scan (the app is stopping); their finished pages stay on disk. No scanimage outlives
        the app: one that has not ended after CANCEL_GRACE is killed (it would keep its scanner busy)."""
        runs = [scan.run for scan in self.scans.values() if scan.run is not None]
        for scan in list(self.scans.values()):
            self.cancel(scan)
        for run in runs:
            try:
                run.process.wait(CANCEL_GRACE)
            except subprocess.TimeoutExpired:
                self._kill(run)


def _next_number(scan: Scan) -> int:
    numbers = [int(m.group(1)) for p in scan.folder.glob("page-*.png") if (m := re.match(r"page-(\d+)", p.name))]
    return max(numbers, default=0) + 1


def _read_device(folder: Path) -> str:
    try:
        return (folder / ".device").read_text().strip()
    except OSError:
        return ""
