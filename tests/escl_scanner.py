"""An eSCL (AirScan) scanner on loopback for the scanner tests and the benchmark: a real HTTP server that the real
sane-airscan backend drives through the real `scanimage`, so `appliance.scanner` is tested as it meets a network
scanner, with no hardware.

It speaks the part of eSCL (Mopria / Apple AirScan) that sane-airscan uses: GET ScannerCapabilities (a platen and a
simplex feeder, grey and colour, PNG and JPEG, discrete resolutions), GET ScannerStatus, POST ScanJobs (201 and a
Location), GET <job>/NextDocument (a page, then 404 when the job has no more) and DELETE <job>. Each page served is
one of the given images, scaled to the region and resolution the job asked for: the glass holds one page (it is
scanned again for each job, as a sheet left on a flatbed is); the feeder holds a stack, each page taken once.

`jam_after=N` makes the feeder jam after N more pages: NextDocument answers 503 and ScannerStatus says
ScannerAdfJam, which sane-airscan reports as SANE_STATUS_JAMMED. A feeder job on an empty feeder is answered 409
(ScannerAdfEmpty: SANE_STATUS_NO_DOCS). `page_seconds` makes each page take that long, to act while a run goes on.
`jobs` and `requests` tell a test what sane-airscan asked for.

    with EsclScanner(platen=page, feeder=[p1, p2, p3]) as scanner:
        config = sane_config(tmp_path / "sane", scanner.url)   # SANE_CONFIG_DIR for scanimage
"""

from __future__ import annotations

import glob
import io
import shutil
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from bench.dataset import SANS

NAME = "Emulated eSCL"  # the device's name in airscan.conf: SANE lists it as "airscan:e0:Emulated eSCL"
DEVICE = f"airscan:e0:{NAME}"
PWG = "http://www.pwg.org/schemas/2010/12/sm"
SCAN = "http://schemas.hp.com/imaging/escl/2011/05/03"
A4 = (2480, 3508)  # 210 x 297 mm in eSCL's units, 1/300 inch
RESOLUTIONS = (75, 150, 300, 600)


def missing() -> str | None:
    """Why SANE cannot drive the emulator here (no scanimage, no sane-airscan), or None."""
    if shutil.which("scanimage") is None:
        return "no scanimage: apt-get install sane-utils"
    dirs = ("/usr/lib/sane", "/usr/lib/*/sane", "/usr/local/lib/sane", "/usr/local/lib/*/sane")
    if not any(glob.glob(f"{d}/libsane-airscan.so*") for d in dirs):
        return "no SANE airscan backend: apt-get install sane-airscan"
    return None


def text_page(lines: list[str], area: tuple[int, int] = A4, size: int = 50) -> Image.Image:
    """A white page of `area` at 300 dpi with black DejaVu Sans lines (50 px: 12 pt), one per entry."""
    image = Image.new("L", area, 255)
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(SANS, size)
    for i, line in enumerate(lines):
        draw.text((150, 150 + 2 * size * i), line, fill=0, font=font)
    return image


def sane_config(folder: Path, url: str) -> Path:
    """A SANE config dir with only sane-airscan, pointed at the scanner at `url` (no network discovery): the value
    for SANE_CONFIG_DIR. sane-airscan also reads /etc/sane.d/airscan.conf after this one (it appends its default
    dir to SANE_CONFIG_DIR), so a host's own airscan devices may be listed too; SANE's dll reads only this dll.conf.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dll.conf").write_text("airscan\n")
    (folder / "airscan.conf").write_text(f'[devices]\n"{NAME}" = {url}, eSCL\n\n[options]\ndiscovery = disable\n')
    return folder


def sane_test_config(folder: Path, settings: dict) -> Path:
    """A SANE config dir with only SANE's own `test` backend (one virtual scanner, test:0), its defaults set by
    `settings`, test.conf's keys as they are spelt there (e.g. {"br_x": 210.0, "read-delay": True}): the value for
    SANE_CONFIG_DIR."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dll.conf").write_text("test\n")
    lines = [f"{key} {_conf_value(value)}" for key, value in settings.items()]
    (folder / "test.conf").write_text("\n".join(["number_of_devices 1", *lines, ""]))
    return folder


def _conf_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else str(value)


def _xml(root: ET.Element) -> bytes:
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root)


def _add(parent: ET.Element, tag: str, text: object = None) -> ET.Element:
    """A child `pwg:Name` or `scan:Name`, written with exactly those prefixes (sane-airscan matches them as text)."""
    element = ET.SubElement(parent, tag)
    if text is not None:
        element.text = str(text)
    return element


def capabilities(area: tuple[int, int]) -> bytes:
    root = ET.Element("scan:ScannerCapabilities", {"xmlns:pwg": PWG, "xmlns:scan": SCAN})
    _add(root, "pwg:Version", "2.63")
    _add(root, "pwg:MakeAndModel", "Appliance Tests eSCL Scanner")
    _add(root, "pwg:SerialNumber", "TEST-0001")
    _add(root, "scan:Manufacturer", "Appliance Tests")
    _add(root, "scan:UUID", "4509a320-00a0-008f-00b6-002507510eca")
    _input_caps(_add(_add(root, "scan:Platen"), "scan:PlatenInputCaps"), area)
    adf = _add(root, "scan:Adf")
    _input_caps(_add(adf, "scan:AdfSimplexInputCaps"), area)
    _add(adf, "scan:FeederCapacity", 50)
    _add(_add(adf, "scan:AdfOptions"), "scan:AdfOption", "DetectPaperLoaded")
    return _xml(root)


def _input_caps(caps: ET.Element, area: tuple[int, int]) -> None:
    for tag, value in (("MinWidth", 16), ("MaxWidth", area[0]), ("MinHeight", 16), ("MaxHeight", area[1])):
        _add(caps, f"scan:{tag}", value)
    _add(caps, "scan:MaxScanRegions", 1)
    profile = _add(_add(caps, "scan:SettingProfiles"), "scan:SettingProfile")
    modes = _add(profile, "scan:ColorModes")
    for mode in ("Grayscale8", "RGB24"):
        _add(modes, "scan:ColorMode", mode)
    formats = _add(profile, "scan:DocumentFormats")
    for mime in ("image/png", "image/jpeg"):
        _add(formats, "pwg:DocumentFormat", mime)
        _add(formats, "scan:DocumentFormatExt", mime)
    resolutions = _add(_add(profile, "scan:SupportedResolutions"), "scan:DiscreteResolutions")
    for dpi in RESOLUTIONS:
        one = _add(resolutions, "scan:DiscreteResolution")
        _add(one, "scan:XResolution", dpi)
        _add(one, "scan:YResolution", dpi)
    intents = _add(caps, "scan:SupportedIntents")
    for intent in ("Document", "TextAndGraphic", "Photo"):
        _add(intents, "scan:Intent", intent)


@dataclass
class Job:
    """One ScanJobs request: what it asked for and what it has served."""

    id: str
    source: str  # "Platen" or "Feeder"
    mode: str  # "Grayscale8" or "RGB24"
    mime: str
    resolution: int
    region: tuple[int, int, int, int]  # x, y, width, height in 1/300 inch
    served: int = 0
    state: str = "Processing"  # then Completed, Aborted or Canceled


@dataclass
class State:
    platen: Image.Image | None
    feeder: list[Image.Image]
    area: tuple[int, int]
    jam_after: int | None = None
    jammed: bool = False
    jobs: dict[str, Job] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)  # "METHOD path" of every request, in order


class EsclScanner:
    """The emulated scanner, served on 127.0.0.1 (a free port) from `start()` (or `with`) until `stop()`.

    `platen`: the page on the glass (None: the empty glass, a white page); `feeder`: the stack in the feeder, first
    page first; `area`: the glass's (and the feeder's widest page's) size in 1/300 inch; every page is an image of
    that whole area. `jam_after`: the feeder jams after this many more pages (None: never). `page_seconds`: how long
    each page takes to scan (0: at once), so that a test can act while a run is going."""

    def __init__(
        self,
        platen: Image.Image | None = None,
        feeder: list[Image.Image] = (),
        area: tuple[int, int] = A4,
        jam_after: int | None = None,
        page_seconds: float = 0,
    ):
        self.state = State(platen, list(feeder), area, jam_after)
        self.page_seconds = page_seconds
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/eSCL"

    def place(self, page: Image.Image | None) -> None:
        """Put a page on the glass (None: take it off)."""
        with self.lock:
            self.state.platen = page

    def load(self, pages: list[Image.Image], jam_after: int | None = None) -> None:
        """Put a stack in the feeder (after what is left there)."""
        with self.lock:
            self.state.feeder.extend(pages)
            self.state.jam_after, self.state.jammed = jam_after, False

    @property
    def jobs(self) -> list[Job]:
        with self.lock:
            return list(self.state.jobs.values())

    @property
    def requests(self) -> list[str]:
        with self.lock:
            return list(self.state.requests)

    def start(self) -> EsclScanner:
        self.thread = threading.Thread(target=self.server.serve_forever, name="escl-scanner", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self.thread:
            self.thread.join(10)

    def __enter__(self) -> EsclScanner:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the protocol, called by the handler under self.lock --

    def status(self) -> bytes:
        state = self.state
        root = ET.Element("scan:ScannerStatus", {"xmlns:pwg": PWG, "xmlns:scan": SCAN})
        _add(root, "pwg:Version", "2.63")
        busy = any(job.state == "Processing" for job in state.jobs.values())
        _add(root, "pwg:State", "Processing" if busy else "Idle")
        adf = "ScannerAdfJam" if state.jammed else ("ScannerAdfLoaded" if state.feeder else "ScannerAdfEmpty")
        _add(root, "scan:AdfState", adf)
        jobs = _add(root, "scan:Jobs")
        for job in state.jobs.values():
            info = _add(jobs, "scan:JobInfo")
            _add(info, "pwg:JobUri", f"/eSCL/ScanJobs/{job.id}")
            _add(info, "pwg:JobUuid", job.id)
            _add(info, "scan:Age", 1)
            _add(info, "pwg:ImagesCompleted", job.served)
            _add(info, "pwg:ImagesToTransfer", 1 if job.state == "Processing" else 0)
            _add(info, "pwg:JobState", job.state)
            reason = {"Completed": "JobCompletedSuccessfully", "Canceled": "JobCanceledByUser"}.get(job.state)
            _add(_add(info, "pwg:JobStateReasons"), "pwg:JobStateReason", reason or "JobScanning")
        return _xml(root)

    def new_job(self, settings: bytes) -> tuple[int, str | None]:
        """(HTTP status, the job's id): 201, or 409 for the feeder when it is empty or jammed."""
        found = {e.tag.rpartition("}")[2]: (e.text or "").strip() for e in ET.fromstring(settings).iter()}
        source = found.get("InputSource", "Platen")
        if source == "Feeder" and (self.state.jammed or not self.state.feeder):
            return 409, None
        job = Job(
            id=uuid.uuid4().hex,
            source=source,
            mode=found.get("ColorMode", "RGB24"),
            mime=found.get("DocumentFormatExt") or found.get("DocumentFormat", "image/png"),
            resolution=int(found.get("XResolution", 300)),
            region=tuple(int(found.get(k, 0)) for k in ("XOffset", "YOffset", "Width", "Height"))
            if "Width" in found
            else (0, 0, *self.state.area),
        )
        self.state.jobs[job.id] = job
        return 201, job.id

    def next_document(self, job: Job) -> tuple[int, bytes]:
        """(200, the next page as the job's format), (404, b"") when the job has no more, (503, b"") on a jam."""
        state = self.state
        if job.state != "Processing":
            return 404, b""
        if job.source == "Platen":
            if job.served:
                job.state = "Completed"
                return 404, b""
            page = state.platen or Image.new("L", (state.area[0] // 4, state.area[1] // 4), 255)
        else:
            if state.jam_after is not None and job.served >= state.jam_after:
                state.jammed, job.state = True, "Aborted"
                return 503, b""
            if not state.feeder:
                job.state = "Completed"
                return 404, b""
            page = state.feeder.pop(0)
        job.served += 1
        return 200, self.render(page, job)

    def render(self, page: Image.Image, job: Job) -> bytes:
        """The part of `page` (an image of the whole area) inside the job's region, at the job's resolution."""
        x, y, width, height = job.region
        scale_x, scale_y = page.width / self.state.area[0], page.height / self.state.area[1]
        box = (round(x * scale_x), round(y * scale_y), round((x + width) * scale_x), round((y + height) * scale_y))
        size = (max(1, width * job.resolution // 300), max(1, height * job.resolution // 300))
        image = page.convert("L" if job.mode == "Grayscale8" else "RGB").resize(size, Image.LANCZOS, box=box)
        buf = io.BytesIO()
        if job.mime == "image/jpeg":
            image.save(buf, format="JPEG", quality=90, dpi=(job.resolution, job.resolution))
        else:
            image.save(buf, format="PNG", compress_level=1, dpi=(job.resolution, job.resolution))
        return buf.getvalue()


def _handler(scanner: EsclScanner) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as scanners answer; every reply has a Content-Length

        def log_message(self, *args) -> None:  # quiet: requests are kept in scanner.requests instead
            pass

        def reply(self, status: int, body: bytes = b"", content_type: str = "text/xml", headers=()) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def route(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path = self.path.split("?")[0].rstrip("/")
            if path.endswith("/NextDocument"):
                time.sleep(scanner.page_seconds)  # the scanner at work
            with scanner.lock:
                scanner.state.requests.append(f"{method} {path}")
                parts = path.split("/")  # "", "eSCL", "ScanJobs", id, "NextDocument"
                job = scanner.state.jobs.get(parts[3]) if len(parts) > 3 and parts[2] == "ScanJobs" else None
                if method == "GET" and path == "/eSCL/ScannerCapabilities":
                    return self.reply(200, capabilities(scanner.state.area))
                if method == "GET" and path == "/eSCL/ScannerStatus":
                    return self.reply(200, scanner.status())
                if method == "POST" and path == "/eSCL/ScanJobs":
                    status, job_id = scanner.new_job(body)
                    if job_id is None:
                        return self.reply(status)
                    location = f"{scanner.url}/ScanJobs/{job_id}"
                    return self.reply(status, headers=[("Location", location)])
                if job is not None and method == "GET" and parts[4:] == ["NextDocument"]:
                    status, image = scanner.next_document(job)
                    return self.reply(status, image, job.mime if status == 200 else "text/plain")
                if job is not None and method == "DELETE" and len(parts) == 4:
                    if job.state == "Processing":
                        job.state = "Canceled"
                    return self.reply(200)
                return self.reply(404)

        def do_GET(self) -> None:
            self.route("GET")

        def do_POST(self) -> None:
            self.route("POST")

        def do_DELETE(self) -> None:
            self.route("DELETE")

    return Handler
