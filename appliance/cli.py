"""The `appliance` command: argument parsing only; every command calls into the modules that do the work."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from appliance import __version__, runtime
from appliance.ocr.engines.base import ENGINE_NAMES
from appliance.ocr.tasks import LANGUAGES, Task


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=ENGINE_NAMES, help="OCR engine (default: the image's, else auto)")
    p.add_argument(
        "--model",
        metavar="DIR",
        help="local HunyuanOCR model directory (config.json + weights; default: the gpu image's)",
    )
    p.add_argument("--vllm-url", metavar="URL", help="vLLM OpenAI-compatible server (default: loopback :8001)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appliance", description="Offline OCR appliance")
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    ocr = sub.add_parser("ocr", help="recognise images and PDFs", description="Recognise images and PDFs.")
    ocr.add_argument("files", nargs="+", metavar="FILE")
    ocr.add_argument(
        "--task",
        help=f"one of: {', '.join(t.value for t in Task)} (or plain_ocr, doc_parser, translation); "
        "default: the image's default_task, else spotting",
    )
    ocr.add_argument("--fields", help="field names for --task extract, comma separated")
    ocr.add_argument(
        "--to", dest="target_lang", default="en", help=f"target language for translate: {', '.join(LANGUAGES)}"
    )
    ocr.add_argument("--format", default="txt", choices=("json", "txt", "md"), help="json: one document per line")
    _engine_args(ocr)

    doctor = sub.add_parser("doctor", help="show which engine would run and why, and what the build host lacks")
    _engine_args(doctor)
    doctor.add_argument("--missing-packages", action="store_true", help="only print the Debian packages to install")

    build = sub.add_parser("build", help="build the live ISO (out/<name>-<version>-<profile>.iso)")
    build.add_argument("--profile", default="cpu", help="a name in build/profiles/ or a YAML file (default: cpu)")
    build.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a profile setting, e.g. --set lan=on --set lan_token=SECRET (repeatable)",
    )
    build.add_argument(
        "--model",
        metavar="DIR",
        help="local HunyuanOCR model directory (gpu profile; cpu profile: every task on the CPU)",
    )
    build.add_argument(
        "--model-version",
        choices=("1.5", "1.0"),
        help="which HunyuanOCR in DIR: 1.5 (the repo's root) or 1.0 (its v1.0/); the same as --set model_version=...",
    )
    build.add_argument(
        "--accept-model-license",
        action="store_true",
        help="you read and accept the Tencent Hunyuan Community License of the weights (gpu profile)",
    )
    build.add_argument("--out", metavar="DIR", help="output folder (default: out)")
    build.add_argument("--cache", metavar="DIR", help="downloaded packages and built layers (default: cache)")
    build.add_argument("--dump-config", action="store_true", help="print the effective settings first")
    build.add_argument(
        "--verify-reproducible",
        action="store_true",
        help="build twice from clean caches (the second from another checkout, umask and locale) into "
        "OUT (default: out/reproduce) and compare the ISOs bit for bit; exit 1 naming the files that differ",
    )

    boot = sub.add_parser("boot-test", help="boot an ISO in QEMU and check kiosk, units, health, OCR and network")
    boot.add_argument("iso")
    boot.add_argument(
        "--modes",
        default="bios-cd,uefi-cd,bios-usb,uefi-usb",
        help="comma-separated: {bios,uefi}-{cd,usb} (usb: the .img), {bios,uefi}-raw (the ISO written raw), "
        "uefi-filecopy (its files on a FAT32 stick, Rufus ISO mode), {bios,uefi}-loopback (the ISO file on a "
        "Ventoy-style exFAT stick, GRUB loopback); optionally :ENTRY (toram, safe, verify)",
    )
    boot.add_argument("--artifacts", default="out/boot-test", help="serial logs, screenshots, pcaps, result.json")
    boot.add_argument("--timeout", type=int, default=600, help="seconds per boot (TCG is slow)")
    boot.add_argument("--lan-token", help="the token the image was built with (to call its API)")
    boot.add_argument(
        "--smb-login",
        metavar="USER%PASSWORD",
        help="an image built with smb=on: its smb_user and smb_password (the first LAN boot checks the SMB share)",
    )
    boot.add_argument(
        "--persistence",
        action="store_true",
        help="also check that data survives a reboot (usb: the .img's partition; raw: the first boot makes "
        "persistent storage from the UI, each later boot finds the result the boot before made in History; "
        "loopback: a Ventoy persistence .dat as its plugin maps it)",
    )
    boot.add_argument(
        "--quick",
        action="store_true",
        help="each boot only: selftest, kiosk, health, one OCR (and --persistence); no full page, poison job, SMB "
        "or data stick checks",
    )
    boot.add_argument(
        "--pull-stick",
        action="store_true",
        help="pull the data stick while the guest runs: its finished outputs must be on it",
    )
    boot.add_argument(
        "--stick-fs",
        choices=("vfat", "exfat", "ntfs", "ntfs-dirty"),
        default="vfat",
        help="the data stick's filesystem (exfat and ntfs need root and FUSE tools on this host; "
        "ntfs-dirty: marked as pulled without ejecting, so the image can only read it)",
    )

    serve = sub.add_parser("serve", help="serve the web UI and the HTTP API (loopback by default)")
    serve.add_argument("--host", help="default: loopback, or every address when the image's lan is on")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--data",
        metavar="DIR",
        default=str(runtime.DATA_DIR),
        help=f"jobs, results and history (default: {runtime.DATA_DIR})",
    )
    serve.add_argument("--scan", metavar="ROOT", help="also run the scan folder on ROOT, through the same queue")
    serve.add_argument("--lan-token", metavar="SECRET", help="require 'Authorization: Bearer SECRET' on API calls")
    _engine_args(serve)

    watch = sub.add_parser(
        "watch", help="scan-to-folder: OCR every file dropped into ROOT/inbox (see docs/scan-folder.md)"
    )
    watch.add_argument("root", help="folder holding inbox/, outbox/, done/, failed/ (created if missing)")
    watch.add_argument("--once", action="store_true", help="process what is in the inbox, then exit")
    watch.add_argument("--retry-failed", action="store_true", help="move failed files back into the inbox first")
    watch.add_argument("--quiet", type=float, help="seconds a file must stay unchanged before it is read (default 3)")
    watch.add_argument(
        "--give-up", type=float, help="seconds an unreadable, unchanged file waits before failing (60)"
    )
    watch.add_argument("--media", action="append", help="where USB sticks are mounted (repeatable)")
    watch.add_argument(
        "--outputs",
        type=lambda v: tuple(f.strip() for f in v.split(",") if f.strip()),
        help="outbox files to write, comma separated, e.g. txt,json,pdf (default: the runtime config's outputs)",
    )
    _engine_args(watch)

    vllm = sub.add_parser("vllm-server", help="start vLLM serving the model on loopback (GPU machines)")
    vllm.add_argument("--model", metavar="DIR", help="model directory (default: the gpu image's)")
    vllm.add_argument("--port", type=int, default=8001)
    vllm.add_argument("--gpu-memory-utilization", type=float, default=0.8)
    vllm.add_argument(
        "--auto",
        action="store_true",
        help="size memory use and max model length from the card's memory (the image's unit uses this)",
    )
    vllm.add_argument(
        "--max-pixels", type=int, help="image pixel cap for its clients (default: the card's, or 2048*2048)"
    )
    kiosk = sub.add_parser("kiosk", help="run the kiosk browser and keep it on the appliance's page (X session)")
    kiosk.add_argument("--url", default="http://127.0.0.1:8000/", help="the web app")
    kiosk.add_argument("--window-size", metavar="W,H", help="the screen's size, for the browser window")
    kiosk.add_argument("--browser", default="chromium", help="the browser's executable")

    persist = sub.add_parser(
        "persistence",
        help="persistent storage on the stick the appliance booted from (root)",
        description="status: what can be done on the boot stick; create: add a `persistence` partition in its free "
        "space (or finish a half-made one); update: what appliance-persistence.service runs (a pending request from "
        "the web app, then the state file the web app reads).",
    )
    persist.add_argument("action", choices=("status", "create", "update"))
    persist.add_argument("--json", action="store_true", help="status: print it as JSON")
    persist.add_argument("--yes", action="store_true", help="create: do not ask first")

    llama = sub.add_parser("llama-server", help="start llama.cpp's llama-server serving the model on loopback (CPU)")
    llama.add_argument("--model", metavar="DIR", help="model directory with gguf/ (default: the image's)")
    llama.add_argument("--port", type=int, default=8002)
    llama.add_argument("--threads", type=int, help="CPU threads (default: the physical cores)")
    llama.add_argument("--ctx-size", type=int, help="context tokens: image + prompt + answer (default: 8192)")
    llama.add_argument("--max-pixels", type=int, help="image pixel cap the clients keep (default: the model's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("ocr", "doctor", "serve", "watch", "vllm-server", "llama-server"):
        config = _runtime_defaults(args)
    if args.command == "ocr":
        return cmd_ocr(args)
    if args.command == "doctor":
        return cmd_doctor(args)
    if args.command == "build":
        if not _host_only("build"):
            return 2
        from imagebuilder import BuildError, SettingsError, run_build

        try:
            overrides = args.overrides + ([f"model_version={args.model_version}"] if args.model_version else [])
            if args.verify_reproducible:
                from imagebuilder.reproduce import build_twice

                same = build_twice(args.profile, overrides, args.model, args.out, args.accept_model_license)
                return 0 if same else 1
            run_build(
                args.profile,
                overrides,
                args.model,
                args.out,
                args.cache,
                args.dump_config,
                accept_model_license=args.accept_model_license or None,
            )
        except (SettingsError, BuildError) as error:
            _fail(str(error))
            return 2
        return 0
    if args.command == "boot-test":
        if not _host_only("boot-test"):
            return 2
        from imagebuilder.boottest import boot_test, require_stick_tools

        try:
            require_stick_tools(args.stick_fs)
        except RuntimeError as error:
            _fail(str(error))
            return 2
        return boot_test(
            Path(args.iso),
            args.modes.split(","),
            Path(args.artifacts),
            args.timeout,
            lan_token=args.lan_token,
            persistence=args.persistence,
            pull_stick=args.pull_stick,
            stick_fs=args.stick_fs,
            smb_login=args.smb_login,
            quick=args.quick,
        )
    if args.command == "serve":
        from webui.server import serve

        serve(
            args.host or config.listen_host,
            args.port,
            engine=args.engine,
            model_dir=args.model,
            data_dir=args.data,
            lan_token=args.lan_token,
            vllm_url=args.vllm_url,
            scan_dir=args.scan,
            runtime_config=config,
        )
        return 0
    if args.command == "watch":
        return cmd_watch(args)
    if args.command == "vllm-server":
        return cmd_vllm_server(args)
    if args.command == "kiosk":
        from appliance import kiosk

        browser = kiosk.browser_command(args.window_size, args.browser)
        kiosk.Kiosk(browser, args.url, language=runtime.load().language).run()
        return 0
    if args.command == "llama-server":
        return cmd_llama_server(args)
    if args.command == "persistence":
        return cmd_persistence(args)
    raise AssertionError(args.command)


def _runtime_defaults(args) -> runtime.Runtime:
    """Fill the flags not given from the image's runtime config (a host without one gets its defaults)."""
    config = runtime.load()
    for flag, value in (
        ("engine", config.engine),
        ("model", config.model_dir),
        ("task", config.default_task),
        ("outputs", tuple(config.outputs)),
    ):
        if hasattr(args, flag) and getattr(args, flag) is None:
            setattr(args, flag, value)
    return config


def _fail(message: str) -> None:
    print(f"appliance: {message}", file=sys.stderr)


def _host_only(command: str, quiet: bool = False) -> bool:
    """Whether the image builder (package imagebuilder, host only) can be imported; the image ships without it."""
    try:
        import imagebuilder  # noqa: F401
    except ImportError as error:
        if not (error.name or "").startswith("imagebuilder"):
            raise  # the builder is here but one of its own imports failed: show that
        if not quiet:
            _fail(
                f"{command}: the image builder is not installed here (it runs on a build host, from the source "
                "checkout or a host install of ocr-appliance)"
            )
        return False
    return True


class ProgressBar:
    """Page progress on stderr for multi-page files: a redrawn bar on a terminal, one line per page otherwise."""

    def __init__(self, name: str):
        self.name = name
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()

    def __call__(self, done: int, total: int, blank: int = 0) -> None:
        if total <= 1:
            return
        if self.tty:
            filled = int(30 * done / total)
            secs = time.monotonic() - self.started
            end = "\n" if done == total else ""
            print(
                f"\r{self.name} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} pages {secs:.0f}s",
                end=end,
                file=sys.stderr,
                flush=True,
            )
        elif done:
            print(f"{self.name}: page {done}/{total}", file=sys.stderr, flush=True)


def cmd_ocr(args) -> int:
    from appliance.ocr.engines.select import open_engine
    from appliance.ocr.errors import OcrError
    from appliance.ocr.pipeline import recognize_file
    from appliance.ocr.tasks import Request

    try:
        request = Request.make(args.task, fields=args.fields, target_lang=args.target_lang)
    except ValueError as e:
        _fail(str(e))
        return 2
    try:
        started = time.perf_counter()
        engine = open_engine(args.engine, model_dir=args.model, vllm_url=args.vllm_url)
        load_seconds = round(time.perf_counter() - started, 3)
    except OcrError as e:
        _fail(str(e))
        return 1
    failed = 0
    try:
        for i, path in enumerate(args.files):
            try:
                result = recognize_file(engine, Path(path), request, name=path, progress=ProgressBar(path))
            except OcrError as e:
                _fail(str(e))
                failed += 1
                continue
            if i == 0:
                result.timings["load"] = load_seconds  # the engine start is paid once, by the first file
            print(_render(result, args.format, header=path if len(args.files) > 1 else None), flush=True)
    finally:
        engine.close()
    return 1 if failed else 0


def cmd_doctor(args) -> int:
    from appliance.doctor import report

    if args.missing_packages:  # for `make iso`: what apt must install on this build host
        if not _host_only("doctor --missing-packages"):
            return 2
        from imagebuilder.host import missing_packages

        print(" ".join(missing_packages()))
        return 0
    print(report(engine=args.engine, model_dir=args.model, vllm_url=args.vllm_url))
    if not _host_only("doctor", quiet=True):  # the image: no build host to check
        return 0
    from imagebuilder.host import check_host

    print("\nbuild host (for `appliance build`):")
    for name, ok, detail in check_host():
        print(f"  {'ok  ' if ok else 'FAIL'} {name:<20} {detail}")
    return 0


def cmd_persistence(args) -> int:
    from appliance import persistence

    if args.action == "update":
        state = persistence.update()
        print((state.job or {}).get("text") or state.status["text"])
        return 1 if (state.job or {}).get("state") in ("failed", "refused") else 0
    now = persistence.status()
    if args.action == "status":
        print(json.dumps(now.to_dict(), ensure_ascii=False, indent=1) if args.json else f"{now.state}: {now.message}")
        return 0
    if not now.offered:
        _fail(str(now.message))
        return 1
    print(f"{now.message} ({now.description or now.disk}); the appliance's own partitions are not touched")
    if not args.yes and not (sys.stdin.isatty() and input("create it? [y/N] ").strip().lower() in ("y", "yes")):
        _fail("nothing done (--yes to create without asking)")
        return 1
    try:
        done = persistence.create(progress=lambda step: print(f"  {step} ...", flush=True))
    except persistence.PersistenceError as error:
        _fail(str(error))
        return 1
    print(f"{done.message}: used from the next start")
    return 0


def cmd_vllm_server(args) -> int:
    from appliance.ocr.errors import OcrError
    from appliance.servers import process
    from appliance.servers.vllm import RUN_DIR, start_server

    if not args.model:
        _fail(f"vllm-server: give --model DIR (or set model_dir in {runtime.CONFIG_PATH})")
        return 2
    sizing = {"gpu_memory_utilization": args.gpu_memory_utilization}
    try:
        if args.auto:
            from appliance.gpu.detect import gpu_memory_bytes, smi_query
            from appliance.gpu.sizing import compile_cache_for, vllm_settings
            from appliance.model_dir import model_version

            memory = gpu_memory_bytes()
            if memory is None:
                _fail("vllm-server --auto: nvidia-smi cannot read the card's memory (is the NVIDIA driver loaded?)")
                return 1
            settings = vllm_settings(memory, model_version(args.model))
            capability = smi_query("compute_cap")
            cache = compile_cache_for(capability)
            sizing = {**settings, "compile_cache": cache}
            print(
                f"vllm-server: {memory / 2**30:.1f} GiB card (compute capability {capability}) -> {settings}, "
                + (f"compiled from {cache}" if cache else "eager (no compile cache for this architecture)"),
                flush=True,
            )
        if args.max_pixels:
            sizing["max_pixels"] = args.max_pixels
        # The unit's RuntimeDirectory, as systemd names it (RUN_DIR on the image); a dev machine has none.
        run_dir = Path(os.environ.get("RUNTIME_DIRECTORY") or RUN_DIR)
        run_dir = run_dir if run_dir.is_dir() else None
        server = start_server(args.model, args.port, **sizing, run_dir=run_dir)
    except (OcrError, ValueError) as error:  # ValueError: NotEnoughGpuMemory, with the UI's sentence
        _fail(f"vllm-server: {error}")
        return 1
    return process.run(server, "vllm serve")


def cmd_llama_server(args) -> int:
    from appliance.ocr.errors import OcrError
    from appliance.servers import process
    from appliance.servers.llamacpp import DEFAULT_CTX_SIZE, RUN_DIR, start_server

    if not args.model:
        _fail(f"llama-server: give --model DIR (or set model_dir in {runtime.CONFIG_PATH})")
        return 2
    try:
        # The unit's RuntimeDirectory, as systemd names it (RUN_DIR on the image); a dev machine has none.
        run_dir = Path(os.environ.get("RUNTIME_DIRECTORY") or RUN_DIR)
        run_dir = run_dir if run_dir.is_dir() else None
        server = start_server(
            args.model,
            args.port,
            threads=args.threads,
            ctx_size=args.ctx_size or DEFAULT_CTX_SIZE,
            max_pixels=args.max_pixels,
            run_dir=run_dir,
        )
    except OcrError as error:
        _fail(f"llama-server: {error}")
        return 1
    return process.run(server, "llama-server")  # ends its whole group; a server that stops by itself has failed


def cmd_watch(args) -> int:
    import logging

    from appliance import scan as watch
    from appliance.ocr.errors import OcrError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    options = {
        k: v
        for k, v in (
            ("quiet", args.quiet),
            ("give_up", args.give_up),
            ("media_dirs", args.media),
            ("outputs", args.outputs),
        )
        if v is not None
    }
    try:
        return watch.run(
            args.root,
            engine=args.engine,
            model_dir=args.model,
            once=args.once,
            retry_failed=args.retry_failed,
            **options,
        )
    except (watch.WatchError, OcrError) as error:
        _fail(f"watch: {error}")
        return 1


def _render(result, fmt: str, header: str | None) -> str:
    if fmt == "json":
        return result.to_json()
    body = (result.markdown or result.text) if fmt == "md" else result.text
    return f"==> {header} <==\n{body}\n" if header else body
