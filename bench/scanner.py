"""Scanner benchmark: scan-to-result time for one A4 page at 300 dpi (grey), and what appliance.scanner adds to
`scanimage` on its own, measured in the same run.

    python3 -m bench.scanner                   # `make bench`; 3 runs of each, medians
    python3 -m bench.scanner --runs 5

Two scanners, both real SANE through the real `scanimage`, pointed at through SANE_CONFIG_DIR: SANE's own `test`
backend (test:0, its "Grid" picture, A4), a scanner with no transfer cost; and the eSCL scanner the tests emulate on
loopback (tests/escl_scanner.py) behind sane-airscan, serving a page of text, so the engine's reading is checked
(CER). For each:

- scanimage alone: the command line appliance.scanner runs (PNG, one page, --progress), without its prompt;
- appliance.scanner: `Scans.start` until the run has ended (the page on disk, the device free), then `as_tiff`, the
  file a scan's job gets; the difference is its overhead;
- OCR: that TIFF through the CPU engine (`recognize_file`, the job worker's pipeline; the model loaded and warmed
  first); scan-to-result = appliance.scanner + OCR.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from appliance.ocr.tasks import Request
from appliance.scanner import SCANIMAGE, Scans
from bench.dataset import EN_WORDS
from imagebuilder.boottest.checks import cer

ROOT = Path(__file__).resolve().parent.parent
RESOLUTION = 300
MODE = "Gray"
# SANE's test backend: one virtual scanner whose defaults are an A4 grid at 300 dpi (its geometry stops at 200 mm
# unless geometry_max is raised); test.conf's own spelling of the keys.
TEST_BACKEND = {"geometry_max": 300.0, "br_x": 210.0, "br_y": 297.0, "resolution": 300.0, "test-picture": "Grid"}


def page_lines(seed: int = 0, lines: int = 24, words: int = 8) -> list[str]:
    """Random words (recognisers must read the pixels), 24 lines of 8: a page of ordinary 12 pt print."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(EN_WORDS) for _ in range(words)).capitalize() for _ in range(lines)]


def alone(device: str, folder: Path, n: int) -> float:
    """Seconds for scanimage by itself to scan one page into `folder`."""
    args = [f"--device-name={device}", "--format=png", "--progress", f"--resolution={RESOLUTION}", f"--mode={MODE}"]
    args += [f"--batch={folder}/alone-{n}-%d.png", "--batch-count=1"]
    started = time.perf_counter()
    done = subprocess.run([SCANIMAGE, *args], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"scanimage failed ({done.returncode}): {done.stderr[-500:]}")
    return seconds


def ours(scans: Scans, device: str, source: str | None = None) -> tuple[float, float, Path]:
    """(seconds of the run, seconds of as_tiff, the TIFF) for one page through appliance.scanner."""
    scan = scans.new()
    started = time.perf_counter()
    scans.start(scan, device, source=source, resolution=RESOLUTION, mode=MODE)
    while scan.run is not None:
        time.sleep(0.005)
    ran = time.perf_counter()
    if scan.error or len(scan.pages()) != 1:
        raise SystemExit(f"appliance.scanner failed: {scan.error} ({len(scan.pages())} pages)")
    tiff = scans.as_tiff(scan)
    return ran - started, time.perf_counter() - ran, tiff


def measure(name: str, device: str, work: Path, runs: int, engine, truth: str | None, source=None) -> dict:
    scans = Scans(work / "scans")
    alone_s, run_s, tiff_s = [], [], []
    tiff = None
    for n in range(runs):  # interleaved, so drift in the machine's speed touches both alike
        alone_s.append(alone(device, work, n))
        run, to_tiff, tiff = ours(scans, device, source)
        run_s.append(run)
        tiff_s.append(to_tiff)
    from appliance.ocr.pipeline import recognize_file

    started = time.perf_counter()
    result = recognize_file(engine, tiff, Request.make("text"))
    ocr_s = time.perf_counter() - started
    row = {
        "name": name,
        "alone": statistics.median(alone_s),
        "run": statistics.median(run_s),
        "tiff": statistics.median(tiff_s),
        "ocr": ocr_s,
        "chars": len(result.text),
        "cer": cer(truth, result.text) if truth is not None else None,
    }
    print(
        f"  {name}: scanimage {', '.join(f'{s:.2f}' for s in alone_s)} s; appliance.scanner run "
        f"{', '.join(f'{s:.2f}' for s in run_s)} s + as_tiff {', '.join(f'{s:.2f}' for s in tiff_s)} s; "
        f"OCR {ocr_s:.2f} s",
        file=sys.stderr,
    )
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.scanner", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="scans of each kind, medians reported (default 3)")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT / "tests"))
    import escl_scanner

    why = escl_scanner.missing()
    if why:
        raise SystemExit(why)
    from appliance.ocr.engines.cpu import CpuEngine

    engine = CpuEngine()
    lines = page_lines()
    text = escl_scanner.text_page(lines)
    from appliance.ocr.pipeline import recognize_file

    warm = io.BytesIO()
    text.save(warm, format="PNG")
    recognize_file(engine, warm.getvalue(), Request.make("text"))  # warm-up: the first page starts the models
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-scanner-") as tmp:
        work = Path(tmp)
        os.environ["SANE_CONFIG_DIR"] = str(escl_scanner.sane_test_config(work / "sane-test", TEST_BACKEND))
        rows.append(measure("test", "test:0", work / "test", args.runs, engine, None))
        with escl_scanner.EsclScanner(platen=text) as scanner:
            os.environ["SANE_CONFIG_DIR"] = str(escl_scanner.sane_config(work / "sane-escl", scanner.url))
            rows.append(
                measure("escl", escl_scanner.DEVICE, work / "escl", args.runs, engine, "\n".join(lines), "Flatbed")
            )
    engine.close()

    print()
    print(
        f"{'scanner':<8} {'scanimage s':>11} {'ours s':>7} {'ratio':>6} {'overhead s':>10} {'as_tiff s':>9} "
        f"{'OCR s':>6} {'scan-to-result s':>16} {'CER':>6}"
    )
    for row in rows:
        mine = row["run"] + row["tiff"]
        print(
            f"{row['name']:<8} {row['alone']:>11.2f} {mine:>7.2f} {mine / row['alone']:>6.2f} "
            f"{mine - row['alone']:>10.2f} {row['tiff']:>9.2f} {row['ocr']:>6.2f} {mine + row['ocr']:>16.2f} "
            f"{'-' if row['cer'] is None else format(row['cer'], '.3f'):>6}"
        )
    print(
        f"\nOne A4 page, {RESOLUTION} dpi, grey; medians of {args.runs} runs. ours = appliance.scanner's run +"
        f" as_tiff; ratio = ours / scanimage alone; OCR = the CPU engine on that TIFF (recognize_file)."
        f" test = SANE's test backend (a grid, no text); escl = sane-airscan and the emulated eSCL scanner on"
        f" loopback (24 lines of 12 pt text). {os.cpu_count()} CPUs, load average {load_before:.1f} before,"
        f" {os.getloadavg()[0]:.1f} after."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
