"""Layer cache keys, the boot menu, the stage list and the manifest helpers: fast, no root, no network."""

import json
import shutil
from pathlib import Path

import pytest
from contexts import enabled_links, make_ctx

from imagebuilder import app, boot, iso, pyenv, rootfs, stages
from imagebuilder.boottest import capture, checks, scan_checks, vm
from imagebuilder.context import BuildError, hash_inputs, source_date_epoch
from imagebuilder.settings import REPO, resolve


def ctx_for(tmp_path, *overrides, repo=REPO):
    return make_ctx(tmp_path, "cpu", *overrides, repo=repo)


def test_hash_inputs_stable_and_sensitive(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.py").write_text("x = 1\n")
    k1 = hash_inputs("x", d, {"b": 1, "a": 2})
    assert k1 == hash_inputs("x", d, {"a": 2, "b": 1})
    (d / "__pycache__").mkdir()
    (d / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"junk")
    assert k1 == hash_inputs("x", d, {"a": 2, "b": 1}), "pycache must not change keys"
    (d / "a.py").write_text("x = 2\n")
    assert k1 != hash_inputs("x", d, {"a": 2, "b": 1})
    (d / "a.py").write_text("x = 1\n")
    (d / "a.py").chmod(0o755)
    assert k1 != hash_inputs("x", d, {"a": 2, "b": 1}), "mode is an input"


def test_app_change_touches_only_app_key(tmp_path):
    """The point of layers: an app-only change must keep the base and python keys."""
    repo = tmp_path / "repo"
    for part in ("appliance", "webui", "rootfs", "build"):
        (repo / part).mkdir(parents=True)
    (repo / "build" / "packages").mkdir()
    for name in ("base", "kiosk"):
        (repo / "build" / "packages" / f"{name}.list").write_text(
            (REPO / "build/packages" / f"{name}.list").read_text()
        )
    (repo / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    (repo / "appliance" / "x.py").write_text("a = 1\n")
    c = ctx_for(tmp_path, repo=repo)
    before = (rootfs.base_key(c), pyenv.python_key(c), app.app_key(c))
    (repo / "appliance" / "x.py").write_text("a = 2\n")
    after = (rootfs.base_key(c), pyenv.python_key(c), app.app_key(c))
    assert before[:2] == after[:2] and before[2] != after[2]


def test_app_key_ignores_the_builder_and_its_boot_test(tmp_path, monkeypatch):
    """The app layer holds the runtime only: editing the boot-test harness (or any builder file but the app step's
    own module and the bytecode step it runs) must not rebuild it."""
    repo = tmp_path / "repo"
    for part in ("appliance", "webui", "rootfs"):
        (repo / part).mkdir(parents=True)
    (repo / "appliance" / "x.py").write_text("a = 1\n")
    shutil.copytree(REPO / "imagebuilder", repo / "imagebuilder", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "build", repo / "build")  # the base layer's key is part of the app's (its units)
    c = ctx_for(tmp_path, repo=repo)
    before = app.app_key(c)
    edited = repo / "imagebuilder" / "boottest" / "checks.py"
    edited.write_text(edited.read_text() + "# edited\n")
    assert app.app_key(c) == before
    hashed = []
    real = app.hash_inputs
    monkeypatch.setattr(app, "hash_inputs", lambda *parts: hashed.extend(parts) or real(*parts))
    app.app_key(c)
    builder = REPO / "imagebuilder"
    read = {p.resolve() for p in hashed if isinstance(p, Path) and p.resolve().is_relative_to(builder)}
    assert read == {builder / "app.py", builder / "bytecode.py"}


def test_app_tree_holds_only_the_runtime_packages(tmp_path):
    c = ctx_for(tmp_path)
    tree = tmp_path / "app-layer"
    app.populate(c, tree)
    site = tree / pyenv.site_dir(c)
    assert sorted(p.name for p in site.iterdir()) == ["appliance", "webui"]
    assert not [p for p in tree.rglob("*") if "imagebuilder" in p.name or p.name == "boottest"]
    assert not (site / "appliance" / "build").exists() and not (site / "appliance" / "settings.py").exists()


def test_settings_change_the_right_layers(tmp_path):
    c1, c2 = ctx_for(tmp_path), ctx_for(tmp_path, "lan=on", "lan_token=abcdefgh1")
    assert rootfs.base_key(c1) == rootfs.base_key(c2)
    assert pyenv.python_key(c1) == pyenv.python_key(c2)
    assert app.app_key(c1) != app.app_key(c2)
    c3 = ctx_for(tmp_path, "packages=htop")
    assert rootfs.base_key(c1) != rootfs.base_key(c3)
    c4 = ctx_for(tmp_path, "python_extras=")
    assert pyenv.python_key(c1) != pyenv.python_key(c4)


def test_explicit_epoch_is_an_input_but_unrelated_commits_are_not(tmp_path):
    c1, c2 = ctx_for(tmp_path), ctx_for(tmp_path, "source_date_epoch=1234")
    assert app.app_key(c1) != app.app_key(c2)
    c3 = ctx_for(tmp_path)
    c3.epoch += 1  # HEAD moved (someone committed elsewhere): no layer may change
    assert (rootfs.base_key(c1), pyenv.python_key(c1), app.app_key(c1)) == (
        rootfs.base_key(c3),
        pyenv.python_key(c3),
        app.app_key(c3),
    )


def test_source_date_epoch_order(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234")
    assert source_date_epoch(resolve("cpu")) == 1234
    assert source_date_epoch(resolve("cpu", ["source_date_epoch=99"])) == 99


def test_package_lists(tmp_path):
    c = ctx_for(tmp_path, "packages=htop,python3")
    pkgs = rootfs.package_list(c)
    assert "live-boot" in pkgs and "chromium" in pkgs and pkgs.count("python3") == 1 and pkgs[-1] == "htop"
    with pytest.raises(BuildError, match="no such list"):
        rootfs.package_list(ctx_for(tmp_path, "package_lists=base,nope"))


def test_requirements_follow_pyproject_and_extras(tmp_path):
    c = ctx_for(tmp_path)
    reqs = pyenv.requirements(c)
    assert any(r.startswith("flask") for r in reqs) and any(r.startswith("rapidocr") for r in reqs)
    assert "--python-version" in pyenv.target_args(c) and "3.13" in pyenv.target_args(c)
    with pytest.raises(BuildError, match="not an extra"):
        pyenv.requirements(ctx_for(tmp_path, "python_extras=nope"))


def test_boot_menu_has_the_four_entries(tmp_path):
    cfg = boot.grub_cfg(ctx_for(tmp_path))
    assert cfg.count("menuentry") == 4
    assert " toram" in cfg and " nomodeset" in cfg and " appliance.verify-medium" in cfg
    assert "boot=live" in cfg and "persistence" in cfg
    # live-boot's verify-checksums reboots once done: the running appliance checks instead and shows the result
    assert "verify-checksums" not in cfg
    assert boot.marker(ctx_for(tmp_path)) in boot.early_cfg(ctx_for(tmp_path))
    # safe graphics: BIOS PCs get a VESA mode from GRUB, else nomodeset leaves no framebuffer to draw on
    safe = cfg[cfg.index("(safe graphics)") :]
    safe = safe[: safe.index("}")]
    assert safe.index("set gfxpayload=") < safe.index("linux ") and " nomodeset" in safe
    assert cfg.count("gfxpayload") == 1


def test_units_and_generated_files(tmp_path):
    c = ctx_for(tmp_path)
    links = enabled_links(c)
    assert links["etc/systemd/system/getty@.service"] == "/dev/null"
    assert links["etc/systemd/system/default.target"] == "/usr/lib/systemd/system/graphical.target"
    # Each unit is linked where its own [Install] section says (the selftest's is graphical.target).
    for unit, target in (
        ("appliance-web", "multi-user"),
        ("appliance-verify-medium", "multi-user"),
        ("appliance-kiosk", "graphical"),
        ("appliance-selftest", "graphical"),
    ):
        link = f"etc/systemd/system/{target}.target.wants/{unit}.service"
        assert links[link] == f"/usr/lib/systemd/system/{unit}.service"
    assert not any("networkd" in k or "nvidia" in k or "vllm" in k for k in links), "no network unless LAN mode"
    files = app.generated(c)
    assert "etc/appliance/lan.env" not in files
    assert "etc/appliance/appliance.env" not in files  # engine and listen address: config.json (appliance.runtime)
    assert json.loads(files["etc/appliance/config.json"][0])["lan"] is False
    lan = ctx_for(tmp_path, "lan=on", "lan_token=abcdefgh1")
    files = app.generated(lan)
    assert files["etc/appliance/lan.env"][1] == 0o600
    assert json.loads(files["etc/appliance/config.json"][0])["lan"] is True
    assert "abcdefgh1" in files["etc/appliance/lan.env"][0]
    # One command line, in the unit; the token never on it (it would show in `ps`).
    unit = (REPO / "rootfs/usr/lib/systemd/system/appliance-web.service").read_text()
    execs = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert len(execs) == 1 and "--host" not in execs[0] and "--scan /srv/ocr/scan" in execs[0]
    assert "TOKEN" not in execs[0] and not any(".service.d/" in k for k in files)
    assert "abcdefgh1" not in files["etc/appliance/config.json"][0]
    lan_links = enabled_links(lan)
    assert (
        lan_links["etc/systemd/system/multi-user.target.wants/systemd-networkd.service"]
        == "/usr/lib/systemd/system/systemd-networkd.service"
    )
    assert "etc/systemd/system/sockets.target.wants/systemd-networkd.socket" in lan_links


def test_every_unit_in_the_overlay_has_a_preset_row():
    units = {p.name for pattern in ("*.service", "*.path") for p in (REPO / "rootfs" / app.UNIT_DIR).glob(pattern)}
    presets = {unit for unit, _ in app.PRESETS}
    # Template units are started by udev (appliance-usb-mount@), never enabled.
    assert units - presets == {"appliance-usb-mount@.service"}
    assert presets - units == {"systemd-networkd.service", "smbd.service"}  # from the base layer


def test_persistence_units_are_enabled_where_live_boot_uses_persistence(tmp_path):
    """appliance-persistence.service at boot (the state), its .path for the web app's requests; neither with
    persistence=off, where live-boot would not use what they make."""
    links = enabled_links(ctx_for(tmp_path / "on"))
    assert "etc/systemd/system/paths.target.wants/appliance-persistence.path" in links
    assert "etc/systemd/system/multi-user.target.wants/appliance-persistence.service" in links
    assert not any(
        "appliance-persistence" in link for link in enabled_links(ctx_for(tmp_path / "off", "persistence=off"))
    )


def test_preset_without_kiosk_or_selftest(tmp_path):
    text = app.preset(ctx_for(tmp_path, "kiosk=off", "selftest=off"))
    assert "enable appliance-web.service" in text and "kiosk" not in text and "selftest" not in text
    assert text.rstrip().endswith("disable *")


def test_volume_id(tmp_path):
    v = iso.volume_id(ctx_for(tmp_path))
    assert len(v) <= 32 and v == v.upper() and " " not in v


def test_stage_names_unique_and_ordered():
    names = [s.name for s in stages.STAGES]
    assert len(names) == len(set(names))
    assert names.index("base-layer") < names.index("python-layer") < names.index("app-layer") < names.index("iso")
    assert names[-1] == "publish"


def test_failed_stage_names_itself(tmp_path):
    c = ctx_for(tmp_path)

    def boom(ctx):
        raise BuildError("no disk")

    with pytest.raises(BuildError, match="stage 'two' failed: no disk"):
        stages.run_stages(
            c, [stages.Stage("one", lambda ctx: "ok"), stages.Stage("two", boom)], log=lambda *a, **k: None
        )


def test_qemu_accel_falls_back_to_tcg(monkeypatch):
    monkeypatch.setenv("APPLIANCE_QEMU_ACCEL", "tcg")
    assert "tcg,thread=multi" in vm.accel()
    if Path("/sys/module/kvm_pvm").exists():
        monkeypatch.delenv("APPLIANCE_QEMU_ACCEL")
        assert "tcg,thread=multi" in vm.accel()


def test_parse_marker():
    line = "state=running failed=[] web=active browser=3 health=200 listen=[127.0.0.1:8000] boots=2"
    r = capture.parse_marker(line)
    assert r["state"] == "running" and r["failed"] == [] and r["listen"] == ["127.0.0.1:8000"] and r["boots"] == "2"
    r = capture.parse_marker("state=degraded failed=[a.service b.service] listen=[]")
    assert r["failed"] == ["a.service", "b.service"] and r["listen"] == []


def test_boot_menu_entries_by_name_and_what_each_must_show():
    assert vm.split_mode("uefi-usb") == ("uefi-usb", "normal")
    assert vm.split_mode("bios-cd:safe") == ("bios-cd", "safe")
    for bad in ("bios-floppy", "bios-cd:rescue"):
        with pytest.raises(SystemExit, match="unknown mode"):
            vm.split_mode(bad)
    line = "state=running cmdline=[toram] medium_device=0 verified=none"
    assert checks.ENTRY_CHECKS["toram"](capture.parse_marker(line)) is True
    assert checks.ENTRY_CHECKS["normal"](capture.parse_marker(line)) != True  # noqa: E712 (a message, not False)
    assert "still mounted" in checks.ENTRY_CHECKS["toram"](capture.parse_marker("cmdline=[toram] medium_device=1"))
    verified = capture.parse_marker("cmdline=[appliance.verify-medium] verified=ok")
    assert checks.ENTRY_CHECKS["verify"](verified) is True
    assert checks.ENTRY_CHECKS["verify"](capture.parse_marker("verified=failed")) == "medium check: failed"


@pytest.mark.skipif(not __import__("shutil").which("mksquashfs"), reason="needs squashfs-tools")
def test_same_inputs_same_layer_bytes(tmp_path):
    """SOURCE_DATE_EPOCH: the files' own mtimes must not leak into the layer."""
    import os

    from imagebuilder import layers

    digests = []
    for i in range(2):
        c = ctx_for(tmp_path / str(i))
        tree = tmp_path / f"tree{i}"
        (tree / "etc").mkdir(parents=True)
        (tree / "etc" / "f").write_text("same")
        os.utime(tree / "etc" / "f", (1000 + i, 1000 + i))
        layer = layers.cached_layer(c, "app", 30, "k", 1700000000)
        layers.finish_layer(c, layer, tree, {})
        digests.append(layer.meta["sha256"])
    assert digests[0] == digests[1]


def test_prune_keeps_recently_used_versions(tmp_path):
    """Old versions go only when unused for a week: two profiles' base layers must not evict each other."""
    import os
    import time
    from types import SimpleNamespace

    from imagebuilder import layers
    from imagebuilder.context import Layer

    ctx = SimpleNamespace(layer_dir=lambda: tmp_path)
    ages = {"base-new": 0, "base-cpu": 3600, "base-gpu": 2 * 3600, "base-stale": 30 * 86400, "app-other": 90 * 86400}
    for name, age in ages.items():
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (time.time() - age, time.time() - age))
    keep = Layer(name="base", order=0, key="new", path=tmp_path / "base-new" / "layer.squashfs", epoch=0)
    layers.prune(ctx, keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app-other", "base-cpu", "base-gpu", "base-new"]


@pytest.mark.skipif(
    not (__import__("shutil").which("sfdisk") and __import__("shutil").which("mke2fs")),
    reason="needs fdisk and e2fsprogs",
)
def test_usb_image_gets_a_persistence_partition(tmp_path):
    """The .img stage (usb_image=on) with a fixed epoch: a partition after the ISO holding an ext4 `persistence`."""
    import json
    import subprocess

    from appliance.persistence import ALIGN
    from imagebuilder import usb

    image = tmp_path / "stick.img"
    with open(image, "wb") as f:  # stands in for the ISO: an MBR with one partition
        f.truncate(3 * 2**20)
    subprocess.run(["sfdisk", "-q", str(image)], input="start=2048, size=2048, type=83\n", text=True, check=True)
    usb.add_persistence(image, 8, tmp_path, epoch=1700000000)
    parts = json.loads(
        subprocess.run(["sfdisk", "-J", str(image)], capture_output=True, text=True, check=True).stdout
    )["partitiontable"]["partitions"]
    assert len(parts) == 2 and parts[1]["start"] * 512 == ALIGN * 3 and parts[1]["size"] * 512 == 8 * 2**20
    with open(image, "rb") as f:  # ext4 superblock at +1024: magic at 0x38, volume name at 0x78
        f.seek(parts[1]["start"] * 512 + 1024)
        sb = f.read(256)
    assert sb[0x38:0x3A] == b"\x53\xef" and sb[0x78:0x88].rstrip(b"\0") == b"persistence"


@pytest.mark.skipif(
    not (__import__("shutil").which("mke2fs") and __import__("shutil").which("debugfs")),
    reason="needs e2fsprogs",
)
def test_ventoy_dat_is_the_persistence_filesystem_as_a_file(tmp_path):
    """ventoy_dat=on: <name>-persistence.dat, ext4 labelled `persistence` with the .img's persistence.conf (live-boot
    reads it once Ventoy maps the file), the same bytes when made again; published beside the ISO."""
    import subprocess

    from appliance.persistence import PERSISTENCE_CONF
    from imagebuilder import usb

    made = []
    for side in ("a", "b"):
        ctx = ctx_for(tmp_path / side, "ventoy_dat=on", "persistence_size_mb=8")
        ctx.work.mkdir(parents=True)
        usb.make_ventoy_dat(ctx)
        dat = ctx.files["ventoy_dat"]
        made.append(dat.read_bytes())
    assert dat.name == f"{ctx.stem}-persistence.dat" and dat.stat().st_size == 8 * 2**20
    probe = subprocess.run(["blkid", "-p", "-o", "export", str(dat)], capture_output=True, text=True).stdout
    assert "TYPE=ext4" in probe and "LABEL=persistence" in probe
    conf = subprocess.run(["debugfs", "-R", "cat /persistence.conf", str(dat)], capture_output=True, text=True)
    assert conf.stdout == PERSISTENCE_CONF
    assert made[0] == made[1]
    assert any(s.name == "ventoy-dat" and s.when(ctx) for s in stages.STAGES)


def test_listeners_judged_by_address():
    assert checks.loopback_only("tcp:127.0.0.1:8000/appliance/1001")
    assert checks.loopback_only("127.0.0.1:8000/appliance")  # an image from before the proto:... format
    assert not checks.loopback_only("udp:0.0.0.0:16088//0")
    assert not checks.loopback_only("tcp:10.0.2.15:8000/appliance/1001")


def test_dead_builds_work_is_removed_with_its_mounts(tmp_path):
    """A killed build's work dir (its pid gone) goes, /proc-like mounts and all; a running build's stays."""
    import subprocess

    from imagebuilder.context import remove_dead_work

    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = tmp_path / f"20261122-000000-{gone.pid}" / "chroot" / "proc"
    live = tmp_path / f"20261122-000000-{__import__('os').getpid()}"
    dead.mkdir(parents=True)
    live.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "none", str(dead)], capture_output=True).returncode == 0
    remove_dead_work(tmp_path)
    assert not dead.parent.parent.exists() and live.exists()
    if mounted:
        assert str(dead) not in Path("/proc/mounts").read_text()


@pytest.mark.parametrize(
    ("overrides", "discovery"),
    [
        ((), False),
        (("lan=on", "lan_token=12345678"), True),
        (("lan=on", "lan_token=12345678", "scanner_discovery=off"), False),
    ],
)
def test_scanner_discovery_only_in_lan_mode(tmp_path, overrides, discovery):
    """Network scanner discovery (sane-airscan's multicast, avahi) only in LAN mode with scanner_discovery; saned
    (scanners shared to other machines) never."""
    ctx = ctx_for(tmp_path, *overrides)
    files = app.generated(ctx)
    conf, mode = files["etc/sane.d/airscan.d/appliance.conf"]
    assert f"discovery = {'enable' if discovery else 'disable'}" in conf and mode == 0o644
    # The makers' own backends broadcast for network scanners (pixma's BJNP was seen in a boot's pcap): only with
    # discovery do they keep Debian's files; without it they keep their USB lines and lose the network search.
    vendor = {name: files.get(f"etc/sane.d/{name}", ("", 0))[0] for name in app.SANE_USB_ONLY}
    if discovery:
        assert not any(vendor.values())
    else:
        settings = {name: text.splitlines()[1:] for name, text in vendor.items()}  # below the header line
        assert settings["pixma.conf"][0] == "networking=no"  # pixma reads it only as the first setting
        assert all(
            "usb" in lines and not any(line.startswith("net") for line in lines)
            for name, lines in settings.items()
            if name != "pixma.conf"
        )


def test_scanner_discovery_probes_are_not_outbound_traffic_in_lan_mode(tmp_path):
    import struct

    def frame(dst: str, dport: int) -> bytes:
        mac = bytes(int(x, 16) for x in vm.GUEST_MAC.split(":"))
        ip = bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 2, 15, *map(int, dst.split("."))])
        return b"\xff" * 6 + mac + b"\x08\x00" + ip + struct.pack("!HHHH", 40000, dport, 8, 0)

    pcap = tmp_path / "guest.pcap"
    frames = [
        frame("239.255.255.250", 3702),
        frame("224.0.0.251", 5353),
        frame("10.0.2.255", 8612),  # SANE's pixma: Canon BJNP
        frame("10.0.2.2", 80),
    ]
    pcap.write_bytes(
        struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
        + b"".join(struct.pack("<IIII", 0, 0, len(f), len(f)) + f for f in frames)
    )
    assert capture.guest_traffic(pcap, allow_dhcp=True, allow_discovery=True) == ["ipv4 proto=17 10.0.2.2:80"]
    assert len(capture.guest_traffic(pcap, allow_dhcp=False)) == 4


def test_the_virtual_scanners_page_travels_small_through_the_debug_shell():
    """The boot test's scanner check sends its page (a gzipped PGM, base64) through the guest's tty: short lines,
    a few KB, and the same pixels SANE's pnm backend will read."""
    import base64
    import gzip
    import io

    from PIL import Image

    png = checks.text_png(checks.OCR_TEXT, 940)
    sent = base64.encodebytes(scan_checks.pgm_gz(png)).decode()
    assert max(len(line) for line in sent.splitlines()) <= 76 and len(sent) < 20_000
    page = Image.open(io.BytesIO(gzip.decompress(base64.decodebytes(sent.encode()))))
    assert page.format == "PPM" and page.mode == "L"
    assert page.tobytes() == Image.open(io.BytesIO(png)).convert("L").tobytes()
