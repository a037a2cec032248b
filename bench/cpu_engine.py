"""CPU engine benchmark: seconds per page and character error rate, ours next to a plain rapidocr call.

    python3 -m bench.cpu_engine                 # `make bench`
    python3 -m bench.cpu_engine --pages 1       # pages per kind (default 2)
    python3 -m bench.cpu_engine --set Det.limit_side_len=960 --set Global.use_cls=false   # try a setting

Both run on the same pages (bench/dataset.py) in the same process, each warmed up first, so model loading is not
timed. "raw" is `RapidOCR()` with its defaults (log level aside) called on the page image, its lines joined in its
own order; "ours" is `CpuEngine().recognize(page, text)`. CER is edit distance / length of the true text, both with
every run of white space made one space, so it counts misread characters and lines read out of order, not layout.
The true text of a page with paragraphs has a paragraph a line, as written (Chinese lines meet without a space).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from bench.dataset import KINDS, make_set
from imagebuilder.boottest.checks import cer


def parse_setting(text: str):
    key, _, value = text.partition("=")
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.cpu_engine", description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=2, help="pages per kind of document (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one of the engine's rapidocr settings, e.g. Det.limit_side_len=960",
    )
    parser.add_argument("--show", action="store_true", help="print each page's text as ours read it")
    args = parser.parse_args(argv)

    from rapidocr import RapidOCR

    from appliance.ocr.engines.cpu import SETTINGS, CpuEngine
    from appliance.ocr.tasks import Request

    overrides = dict(parse_setting(s) for s in args.set)
    samples = make_set(args.pages, args.seed)
    print(f"{len(samples)} pages, {args.pages} per kind; our settings: {SETTINGS | overrides}", file=sys.stderr)

    raw = RapidOCR(params={"Global.log_level": "error"})
    ours = CpuEngine(overrides)
    request = Request.make("text")
    warm = samples[0].image
    raw(warm)
    ours.recognize(warm, request)

    load_before = os.getloadavg()[0]
    rows = []  # kind, raw seconds, our seconds, raw CER, our CER, raw CPU seconds, our CPU seconds
    for sample in samples:
        wall, cpu = time.perf_counter(), time.process_time()
        raw_result = raw(sample.image)
        raw_seconds, raw_cpu = time.perf_counter() - wall, time.process_time() - cpu
        raw_text = "\n".join(raw_result.txts or ())

        wall, cpu = time.perf_counter(), time.process_time()
        page = ours.recognize(sample.image, request)
        our_seconds, our_cpu = time.perf_counter() - wall, time.process_time() - cpu

        rows.append(
            (
                sample.kind,
                raw_seconds,
                our_seconds,
                cer(sample.text, raw_text),
                cer(sample.text, page.text),
                raw_cpu,
                our_cpu,
            )
        )
        print(
            f"  {sample.name:<10} raw {raw_seconds:5.2f}s CER {rows[-1][3]:.3f}   "
            f"ours {our_seconds:5.2f}s CER {rows[-1][4]:.3f}",
            file=sys.stderr,
        )
        if args.show:
            print(page.text, file=sys.stderr)

    print()
    print(
        f"{'set':<10} {'pages':>5} {'raw s/page':>10} {'ours s/page':>11} {'ratio':>6} {'cpu ratio':>9} "
        f"{'raw CER':>8} {'ours CER':>8}"
    )
    for kind in [*KINDS, "overall"]:
        chosen = [r for r in rows if kind == "overall" or r[0] == kind]
        if not chosen:
            continue
        raw_s = statistics.mean(r[1] for r in chosen)
        our_s = statistics.mean(r[2] for r in chosen)
        raw_cer = statistics.mean(r[3] for r in chosen)
        our_cer = statistics.mean(r[4] for r in chosen)
        cpu_ratio = sum(r[6] for r in chosen) / sum(r[5] for r in chosen)
        print(
            f"{kind:<10} {len(chosen):>5} {raw_s:>10.2f} {our_s:>11.2f} {our_s / raw_s:>6.2f} {cpu_ratio:>9.2f} "
            f"{raw_cer:>8.3f} {our_cer:>8.3f}"
        )
    print(
        f"\nratio = ours / raw wall seconds, cpu ratio = the same for CPU seconds (steadier on a busy host); below 1"
        f" is faster. CER = edit distance / true length, mean over pages. {os.cpu_count()} CPUs, load average"
        f" {load_before:.1f} before, {os.getloadavg()[0]:.1f} after."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
