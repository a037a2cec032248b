"""The boot test: boot an ISO in QEMU in each mode (BIOS/UEFI x CD/USB stick, optionally a boot menu entry) with a
fresh data stick, check what the appliance reports, and print one verdict line per boot.

Every wait is bounded. Per boot we keep the serial log, screenshots, a pcap of the guest's network and a JSON verdict
(result.json); summary.json holds them all.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from imagebuilder.boottest.capture import (
    MARKER,
    guest_traffic,
    parse_marker,
    screen_text,
    screenshot,
    serial_tail,
    wait_rendered,
)
from imagebuilder.boottest.checks import (
    KIOSK_TEXT,
    check_full_page,
    check_model_tasks,
    check_ocr,
    check_persistence_create,
    check_persistence_kept,
    check_persistence_refused,
    check_poison_job,
    check_read_only_stick,
    check_scan_stick,
    check_ui_model_doc,
    check_ui_usb_upload,
    check_usb,
    selftest_problems,
)
from imagebuilder.boottest.scan_checks import check_scanner, check_smb
from imagebuilder.boottest.sticks import OCR_TEXT, OUTBOX_TEXT, data_stick, stick_text
from imagebuilder.boottest.vm import MODES, Vm, accel, free_port, split_mode, usb_stick
from imagebuilder.boottest.writers import BUILDERS, ventoy_dat

STICKS = {"usb": usb_stick, **BUILDERS}  # vm.MODES' medium -> how its stick is made from the ISO


def boot_once(
    disk: Path,
    mode: str,
    out: Path,
    timeout: float,
    token: str | None,
    lan: bool,
    stick: Path | None = None,
    pull_stick: bool = False,
    stick_fs: str = "vfat",
    full_page: bool = True,
    smb_login: str | None = None,
    stick_checks: bool = True,
    memory: dict | None = None,
    dat: Path | None = None,
) -> dict:
    """One boot and its checks. `full_page`: also read a full A4 page and run a poison job (minutes under emulation:
    the first LAN boot of a run does them; the poison job needs the guest's debug shell, asked for at GRUB).
    `smb_login` (USER%PASSWORD of an image built with smb=on): the SMB share is forwarded and, with `full_page`,
    checked. `stick_checks`: the data stick's scan folder, USB browser and pull (else it is only seen mounted).
    `memory` (--persistence): what this stick's boots pass on; a raw stick's first boot makes persistent storage
    from the UI (a Ventoy-style stick has it from the start: `dat`, its persistence .dat), each later one finds the
    result the boot before made in History."""
    base, entry = split_mode(mode)
    medium = MODES[base][1]
    poison = lan and full_page
    smb_port = free_port() if smb_login else None
    vm = Vm(
        disk=disk, mode=base, dir=out, stick=stick, entry=entry, debug_shell=poison, smb_port=smb_port, ventoy_dat=dat
    )
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
            result["screenshot"] = screenshot(vm, out / "screen.png")  # what the screen showed, for the CI artifacts
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
        result["kiosk_rendered"] = wait_rendered(vm, out / "screen.png", timeout=timeout)
        result["seconds_to_render"] = round(time.monotonic() - vm.started, 1)
        # The first drawn frame may be a page half painted (the start screen reloading into the form): read again.
        deadline = time.monotonic() + 60
        while result["kiosk_rendered"]:
            result["kiosk_text"] = screen_text(out / "screen.png")[:1000]
            if all(words in result["kiosk_text"] for words in KIOSK_TEXT) or time.monotonic() > deadline:
                break
            time.sleep(5)
            screenshot(vm, out / "screen.png")
        api_problems = []
        if lan and health == 200:
            api_problems += check_ocr(vm, token, result)
            if full_page:
                api_problems += check_full_page(vm, token, result)
            if report.get("llama") == "active":  # an image with the CPU model: every task, and doc in the UI
                api_problems += check_model_tasks(vm, token, result)
                api_problems += check_ui_model_doc(vm, token, out, result)
            if memory is not None:
                if memory.get("made"):
                    api_problems += check_persistence_kept(vm, token, report, result, memory)
                else:
                    made = check_persistence_create(vm, token, result)
                    memory["made"] = not made
                    api_problems += made
            if medium in ("filecopy", "loopback"):  # with Ventoy's .dat too: the appliance must not offer its own
                api_problems += check_persistence_refused(vm, token, result)
            if stick and stick_checks:
                scan_check = check_read_only_stick if stick_fs.endswith("-dirty") else check_scan_stick
                api_problems += scan_check(vm, token, result)
                api_problems += check_ui_usb_upload(vm, token, out, result)
                api_problems += check_usb(vm, token, result, pull_stick)  # pulls the stick
            if smb_login and full_page:
                api_problems += check_smb(vm, smb_login, report, result)
            # Both need the debug shell: a virtual scanner turned on; the web app killed three times (last).
            if poison:
                api_problems += check_scanner(vm, token, result)
                api_problems += check_poison_job(vm, token, out, result)
        screenshot(vm, out / "screen-end.png")
        problems = api_problems + selftest_problems(report, result, entry, lan, health, stick is not None)
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
        served = (8000, 445) if smb_login else (8000,)
        result["outbound"] = guest_traffic(out / "guest.pcap", allow_dhcp=lan, served=served, allow_discovery=lan)
        if result["outbound"]:
            result["ok"] = False
            result.setdefault("problems", []).append(f"guest sent {len(result['outbound'])} unexpected frames")
        (out / "result.json").write_text(json.dumps(result, indent=1))


def boot_test(
    iso: Path,
    modes: list[str],
    artifacts: Path,
    timeout: int = 600,
    lan_token: str | None = None,
    persistence: bool = False,
    pull_stick: bool = False,
    stick_fs: str = "vfat",
    smb_login: str | None = None,
    quick: bool = False,
) -> int:
    """Boot `iso` in each mode; print one line per boot; 0 if every boot passed. `quick`: no full page, poison job,
    SMB or data stick checks (the writers' boots: does it boot, draw the kiosk, OCR, keep its data)."""
    artifacts.mkdir(parents=True, exist_ok=True)
    lan = bool(lan_token)
    results = []
    sticks: dict[str, Path] = {}  # medium -> its stick, made once: the modes sharing it boot it one after the other
    memory: dict[str, dict] = {}
    for mode in modes:
        base, _ = split_mode(mode)
        medium = MODES[base][1]
        disk = iso
        if medium != "cd":
            if medium not in sticks:
                file = "stick.img" if medium == "usb" else f"stick-{medium}.img"
                print(f"making the {medium} stick ...", flush=True)
                sticks[medium] = STICKS[medium](iso, artifacts / file)
            disk = sticks[medium]
        print(f"boot {mode} ({' '.join(accel())}) ...", flush=True)
        name = mode.replace(":", "-")
        again = sum(r["mode"] == mode for r in results)  # booted again (the raw stick's reboots): a folder of its own
        out = artifacts / (f"{name}-{again + 1}" if again else name)
        out.mkdir(exist_ok=True)
        data = data_stick(out / "data-stick.img", stick_fs)  # fresh per boot: its inbox is consumed
        smb = smb_login if lan and not quick else None
        kept, dat = None, None
        if persistence and medium == "raw":
            kept = memory.setdefault(medium, {})
        elif persistence and medium == "loopback":  # Ventoy's persistence plugin: the .dat is there from the start
            kept, dat = memory.setdefault(medium, {"made": True}), artifacts / "ventoy-persistence.dat"
            if not dat.exists():
                ventoy_dat(dat)
        first = not results and not quick
        r = boot_once(
            disk, mode, out, timeout, lan_token, lan, data, pull_stick, stick_fs, first, smb, not quick, kept, dat
        )
        results.append(r)
        print(
            f"  {mode}: {'PASS' if r['ok'] else 'FAIL'} selftest after {r.get('seconds_to_selftest')}s"
            + (f", health after {r.get('seconds_to_health')}s" if lan else "")
            + (f", first OCR after {r.get('seconds_to_first_ocr')}s" if r.get("seconds_to_first_ocr") else "")
            + (f"; {'; '.join(r.get('problems', []))}" if r.get("problems") else "")
            + (f"; {r['error']}" if r.get("error") else ""),
            flush=True,
        )
        if not r["ok"]:  # CI shows this; the whole log, screen.png and the pcap are in `out`
            print(f"  --- end of {out / 'serial.log'} ---\n{serial_tail(out / 'serial.log')}\n  ---", flush=True)
    if persistence and "usb" in sticks:
        # Every USB boot above appended to /srv/ocr/.boot-log on the stick's persistence partition.
        usb_boots = [r for r in results if MODES[split_mode(r["mode"])[0]][1] == "usb" and r.get("selftest")]
        counts = [int(r["selftest"].get("boots") or 0) for r in usb_boots]
        ok = len(counts) >= 2 and counts == list(range(1, len(counts) + 1))
        print(f"  persistence: {'PASS' if ok else 'FAIL'} boot counts on the stick {counts}", flush=True)
        results.append({"mode": "persistence", "ok": ok, "boots": counts})
    (artifacts / "summary.json").write_text(json.dumps(results, indent=1))
    failed = [r for r in results if not r["ok"]]
    for r in failed:  # again at the very end: CI keeps only the tail of a long log
        print(
            f"FAILED {r['mode']}: {'; '.join(r.get('problems') or [r.get('error') or 'see summary.json'])}",
            flush=True,
        )
    return 0 if results and not failed else 1
