"""Scan-folder benchmark: files per minute through the watcher vs calling the engine directly, and the latency
from a file landing in the inbox to its outputs appearing in the outbox.

    python3 -m bench.watch                     # receipts from bench/dataset.py, 2 of each kind
    python3 -m bench.watch --per-kind 3 --quiet 3

Same pages, same engine object, same process: first the engine directly (`recognize_file` on each file, the
model already loaded), then the same files dropped into a watched inbox at once (throughput: from the drop to the
last file's JSON), then files dropped one at a time into an idle watcher (latency). The watcher's extra work per
file is readiness (a full decode), the SHA-256, moving the file, the ledger commits, the job queue (a copy of the
input, its own commits, the result file), four outputs with fsync, and the searchable PDF. The quiet period delays
each file but costs no throughput when files arrive together (the next files settle while one is being recognised),
so it is reported apart.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from appliance import scan as watch
from appliance.jobs import Jobs
from appliance.ocr.engines.cpu import CpuEngine
from appliance.ocr.pipeline import recognize_file
from bench.dataset import make_set


def make_files(folder: Path, per_kind: int, seed: int = 0, kinds=("receipt", "doc_en", "doc_zh")) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for sample in make_set(per_kind=per_kind, seed=seed, kinds=kinds):
        path = folder / f"{sample.name}.png"
        sample.image.save(path)
        files.append(path)
    return files


def direct(engine, files: list[Path]) -> float:
    started = time.perf_counter()
    for path in files:
        recognize_file(engine, path, watch.FOLDERS[""], name=path.name)
    return time.perf_counter() - started


class Timed:
    """The engine behind the watcher's queue, timing its pages: the rest of the watcher's time is its own overhead.
    Closing is left to the benchmark, which uses the engine again after the watcher."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0
        self.info, self.tasks = inner.info, inner.tasks

    def recognize(self, image, request, on_text=None):
        started = time.perf_counter()
        try:
            return self.inner.recognize(image, request, on_text)
        finally:
            self.seconds += time.perf_counter() - started

    def close(self):
        pass


def wait_for(paths: list[Path], timeout: float = 1800) -> dict[Path, float]:
    """When each path appeared (perf_counter), polling every 10 ms."""
    seen: dict[Path, float] = {}
    deadline = time.perf_counter() + timeout
    while len(seen) < len(paths) and time.perf_counter() < deadline:
        for path in paths:
            if path not in seen and path.exists():
                seen[path] = time.perf_counter()
        time.sleep(0.01)
    return seen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-kind", type=int, default=2, help="pages of each kind (receipt, doc_en, doc_zh)")
    parser.add_argument("--quiet", type=float, default=watch.QUIET_SECONDS, help="the watcher's quiet period")
    parser.add_argument("--latency-files", type=int, default=3)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-watch-"))
    try:
        files = make_files(work / "pages", args.per_kind)
        # Different pages for the latency runs: the same bytes again would come from the queue's cache.
        singles = make_files(work / "singles", args.latency_files, seed=1, kinds=("receipt",))
        engine = CpuEngine()  # loaded before anything is timed
        recognize_file(engine, files[0], watch.FOLDERS[""])  # warm-up
        print(f"{len(files)} pages ({', '.join(p.stem for p in files)}), engine {engine.info.name}")

        direct_before = direct(engine, files)

        root = work / "root"
        timed = Timed(engine)
        jobs = Jobs(work / "jobs", lambda report: timed)
        running = watch.WatcherThread(root, watch.JobsRecognizer(jobs), quiet=args.quiet, rescan=5.0, media_dirs=())
        try:
            dropped = time.time()
            for path in files:  # all at once, as a scanner's batch or a copied folder
                shutil.copy(path, root / "inbox" / path.name)
            wait_for([root / "outbox" / f"{p.stem}.json" for p in files])
            finished = time.time()
            first_claim = min(row["created"] for row in watch.ledger_rows(root))
            batch_s, work_s = finished - dropped, finished - first_claim
            engine_s = timed.seconds

            latencies = []
            for path in singles:  # one at a time, into an idle watcher
                landed = time.perf_counter()
                shutil.copy(path, root / "inbox" / f"single-{path.name}")
                appeared = wait_for([root / "outbox" / f"single-{path.stem}.json"])
                latencies.append(max(appeared.values()) - landed)
        finally:
            running.stop()
            jobs.close()
        direct_after = direct(engine, files)  # again: the machine's speed drifts; compare with the mean
        engine.close()

        n = len(files)
        direct_s = (direct_before + direct_after) / 2
        print(
            f"direct engine:       {direct_s:7.1f} s  {60 * n / direct_s:6.1f} files/min  "
            f"(mean of {direct_before:.1f} s before and {direct_after:.1f} s after the watcher runs)"
        )
        print(f"watcher:             {work_s:7.1f} s  {60 * n / work_s:6.1f} files/min  (first claim to last output)")
        print(
            f"watcher overhead:    {100 * (work_s / direct_s - 1):+6.1f} % against the direct runs (noisy on a busy "
            f"machine); its own work outside the engine: {work_s - engine_s:.2f} s = "
            f"{1000 * (work_s - engine_s) / n:.0f} ms/file = {100 * (work_s - engine_s) / engine_s:.1f} % of the "
            f"engine time in the same run"
        )
        print(
            f"watcher, with wait:  {batch_s:7.1f} s  {60 * n / batch_s:6.1f} files/min  "
            f"(drop to last output: + one quiet period of {args.quiet:g} s and the readiness check)"
        )
        print(
            f"latency, one file:   median {statistics.median(latencies):.1f} s  "
            f"({', '.join(f'{x:.1f}' for x in latencies)} s; quiet period {args.quiet:g} s + OCR + outputs)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
