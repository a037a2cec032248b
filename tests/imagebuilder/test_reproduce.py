"""Reproducible images: the comparison and its report on tiny trees, and the stages that used to leak the build
host (pip's direct_url.json, the ESP's file time, the .img's random ids, the manifest's paths) on their own output."""

import base64
import hashlib
import json
import os
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
from contexts import make_ctx

from appliance.files import sha256_file
from imagebuilder import app, boot, layers, manifest, pyenv, reproduce, usb
from imagebuilder.context import Layer
from imagebuilder.settings import REPO


def tools(*names):
    return pytest.mark.skipif(not all(shutil.which(n) for n in names), reason=f"needs {', '.join(names)}")


def write_tree(root: Path, files: dict) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_diff_trees_names_each_difference(tmp_path):
    a = write_tree(tmp_path / "a", {"same": "x", "content": "1", "mode": "m", "gone": "g", "etc/deep": "d"})
    b = write_tree(tmp_path / "b", {"same": "x", "content": "2", "mode": "m", "new": "n", "etc/deep": "d"})
    (b / "mode").chmod(0o600)
    os.utime(b / "same", (1, 1))  # times are not compared: squashfs and the ISO set their own
    (a / "link").symlink_to("same")
    (b / "link").symlink_to("content")
    diff = reproduce.diff_trees(reproduce.scan_tree(a), reproduce.scan_tree(b))
    assert diff.only_a == ["gone"] and diff.only_b == ["new"]
    assert dict(diff.changed) == {"content": "content", "link": "link", "mode": "mode 644 -> 600"}
    assert diff.lines() == [
        "only in A: gone",
        "only in B: new",
        "differs:   content (content)",
        "differs:   link (link)",
        "differs:   mode (mode 644 -> 600)",
    ]
    assert not reproduce.diff_trees(reproduce.scan_tree(a), reproduce.scan_tree(a))
    assert reproduce.TreeDiff(only_b=[f"f{i}" for i in range(50)]).lines(limit=3)[-1] == "... and 47 more"


def make_iso(tmp_path: Path, name: str, layer_files: dict, date: str = "2023111422132000") -> Path:
    """An ISO shaped like ours (live/NN-name.squashfs + a kernel), built by the same tools."""
    tree = tmp_path / name / "tree"
    (tree / "live").mkdir(parents=True)
    (tree / "live" / "vmlinuz").write_text("kernel")
    layer_tree = write_tree(tmp_path / name / "layer", layer_files)
    subprocess.run(
        [
            "mksquashfs",
            layer_tree,
            tree / "live/10-python.squashfs",
            "-quiet",
            "-no-progress",
            "-all-time",
            "1",
            "-mkfs-time",
            "1",
        ],
        check=True,
        capture_output=True,
    )
    iso = tmp_path / name / "out" / "x.iso"
    iso.parent.mkdir()
    dates = [f"--modification-date={date}", "--set_all_file_dates", "2023111422132000"]  # as iso.py
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    subprocess.run(
        ["xorriso", "-as", "mkisofs", "-r", *dates, "-o", iso, tree], check=True, capture_output=True, env=env
    )
    return iso


@tools("mksquashfs", "unsquashfs", "xorriso")
def test_compare_names_the_layer_and_the_files_that_differ(tmp_path):
    files = {"usr/lib/a.py": "a", "usr/lib/b.py": "b"}
    iso_a = make_iso(tmp_path, "a", files)
    iso_b = make_iso(tmp_path, "b", {**files, "usr/lib/b.py": "B"})
    same = make_iso(tmp_path, "c", files)
    said = []
    assert reproduce.compare(iso_a.parent, same.parent, tmp_path / "w1", log=said.append)
    assert said[-1].endswith("SAME")
    said.clear()
    assert not reproduce.compare(iso_a.parent, iso_b.parent, tmp_path / "w2", log=said.append)
    text = "\n".join(said)
    assert "DIFFERENT" in text and "differs:   live/10-python.squashfs (content)" in text
    assert "layer live/10-python.squashfs: files:" in text and "differs:   usr/lib/b.py (content)" in text
    assert "usr/lib/a.py" not in text  # only what differs
    assert "diffoscope" in text  # its output, or how to get it


@tools("mksquashfs", "unsquashfs", "xorriso")
def test_compare_says_when_only_the_iso_structures_differ(tmp_path):
    files = {"usr/lib/a.py": "a"}
    iso_a, iso_b = make_iso(tmp_path, "a", files), make_iso(tmp_path, "b", files, date="2024010100000000")
    said = []
    assert not reproduce.compare(iso_a, iso_b, tmp_path / "w", log=said.append)
    assert "every file in the two ISOs is the same" in "\n".join(said)


@tools("mksquashfs", "unsquashfs", "xorriso")
def test_compare_finds_a_host_path_inside_a_layer(tmp_path):
    iso = make_iso(tmp_path, "a", {"usr/lib/x.dist-info/direct_url.json": f'{{"url": "file://{tmp_path}/w.whl"}}'})
    said = []
    assert not reproduce.compare(iso.parent, iso.parent, tmp_path / "w", [tmp_path], log=said.append)
    assert f"10-python.squashfs: usr/lib/x.dist-info/direct_url.json: {tmp_path}" in "\n".join(said)


def test_host_needles_and_search(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "real")
    resolv = write_tree(tmp_path, {"resolv.conf": "nameserver 10.9.8.7\nnameserver 127.0.0.53\n"}) / "resolv.conf"
    needles = reproduce.host_needles([link, "/"], resolv_conf=resolv)
    assert str(link) in needles and str(tmp_path / "real") in needles and "/" not in needles
    assert "10.9.8.7" in needles and "127.0.0.53" not in needles
    tree = write_tree(tmp_path / "t", {"a": f"#!{tmp_path}/real/bin/python", "b": "clean", "c.squashfs": str(link)})
    assert reproduce.find_host_paths(tree, needles, skip=(".squashfs",)) == [("a", str(tmp_path / "real"))]


def tiny_wheel(folder: Path) -> Path:
    """A real (if small) wheel file, as pip installs it."""
    files = {
        "tinypkg/__init__.py": "VALUE = 1\n",
        "tinypkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n",
        "tinypkg-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }

    def digest(text):
        return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()

    record = "".join(f"{p},sha256={digest(t)},{len(t.encode())}\n" for p, t in files.items())
    files["tinypkg-1.0.dist-info/RECORD"] = record + "tinypkg-1.0.dist-info/RECORD,,\n"
    folder.mkdir(parents=True)
    wheel = folder / "tinypkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for p, t in files.items():
            z.writestr(p, t)
    return wheel


def test_python_layer_files_keep_no_wheel_path(tmp_path):
    """pip records where each wheel lay (direct_url.json, the build's work folder): gone, with its RECORD line, so
    two installs from different folders give the same files."""
    scans = []
    for side in ("a", "b"):
        ctx = make_ctx(tmp_path / side)
        wheel = tiny_wheel(tmp_path / side / "work" / f"{side}-wheels")
        site = tmp_path / side / "layer" / pyenv.site_dir(ctx)
        pyenv.unpack(ctx, [wheel], site)
        info = site / "tinypkg-1.0.dist-info"
        assert (site / "tinypkg" / "__init__.py").exists() and not (info / "direct_url.json").exists()
        assert "direct_url" not in (info / "RECORD").read_text()
        assert reproduce.find_host_paths(site, reproduce.host_needles([tmp_path])) == []
        scans.append(reproduce.scan_tree(site))
    assert not reproduce.diff_trees(*scans)


def test_app_layer_holds_no_host_path_and_git_modes(tmp_path):
    """A checkout made under umask 002 (group-writable files) gives the app layer the modes git keeps."""
    repo = tmp_path / "checkout"
    for part in ("appliance", "webui", "rootfs", "build"):
        shutil.copytree(REPO / part, repo / part, ignore=shutil.ignore_patterns("__pycache__"))
    for p in repo.rglob("*"):
        if p.is_file():
            p.chmod(p.stat().st_mode | 0o020)
    trees = []
    for side in ("a", "b"):
        ctx = make_ctx(tmp_path / side, "cpu", "lan=on", "lan_token=abcdefgh1", repo=repo)
        tree = tmp_path / side / "app-layer"
        app.populate(ctx, tree)
        files = [p for p in tree.rglob("*") if p.is_file()]
        assert {oct(p.stat().st_mode & 0o777) for p in files} <= {"0o644", "0o755", "0o600"}
        assert reproduce.find_host_paths(tree, reproduce.host_needles([tmp_path, REPO])) == []
        trees.append(reproduce.scan_tree(tree))
    assert not reproduce.diff_trees(*trees)


@tools("mksquashfs")
def test_a_layer_is_filled_with_its_own_epoch(tmp_path):
    """The tools that fill a layer see the layer's SOURCE_DATE_EPOCH (its key's), not HEAD's; and no host locale."""
    ctx = make_ctx(tmp_path)
    ctx.work.mkdir()
    seen = {}

    def fill(tree):
        seen.update(ctx.env())
        (tree / "f").parent.mkdir(parents=True)
        (tree / "f").write_text("x")
        return {}

    os.environ["LANGUAGE"] = "fr"
    try:
        layers.reuse_or_build(ctx, layers.cached_layer(ctx, "app", 30, "k", 1234567), fill)
    finally:
        del os.environ["LANGUAGE"]
    assert seen["SOURCE_DATE_EPOCH"] == "1234567" and ctx.env()["SOURCE_DATE_EPOCH"] == str(ctx.epoch)
    assert seen["LC_ALL"] == "C.UTF-8" and seen["TZ"] == "UTC" and "LANGUAGE" not in seen


def test_manifest_is_the_same_for_builds_in_other_folders(tmp_path):
    """What a rebuild needs, nothing that varies: two builds in other cache, output and model folders, one fresh
    and one from the cache, write the same manifest, with no host path in it."""
    texts = []
    for side, cached in (("a", False), ("b", True)):
        ctx = make_ctx(tmp_path / side, "cpu", model=str(tmp_path / side / "model"))
        ctx.work.mkdir()
        ctx.files["iso"] = ctx.work / f"{ctx.stem}.iso"
        ctx.files["iso"].write_bytes(b"iso")
        layer = Layer(name="python", order=10, key="k", path=ctx.work / "l", epoch=5, cached=cached)
        layer.meta = {"size": 3, "sha256": "ab"}
        ctx.layers.append(layer)
        ctx.info["llamacpp"] = {"sdist": {"sha256": "s"}, "variants": ["x64"], "toolchain": {"g++": "14"}}
        manifest.write_manifest(ctx)
        texts.append(ctx.files["manifest"].read_text())
    assert texts[0] == texts[1]
    said = []
    assert reproduce.compare_manifests(tmp_path / "a" / "work", tmp_path / "b" / "work", log=said.append)
    (tmp_path / "b" / "work" / "ocr-appliance-0.1.0-cpu.manifest.json").write_text(texts[1].replace('"ab"', '"cd"'))
    assert not reproduce.compare_manifests(tmp_path / "a" / "work", tmp_path / "b" / "work", log=said.append)
    assert said == [
        "ocr-appliance-0.1.0-cpu.manifest.json: SAME",
        "ocr-appliance-0.1.0-cpu.manifest.json: DIFFERENT in layers",
    ]
    data = json.loads(texts[0])
    assert str(tmp_path) not in texts[0] and data["settings"]["model_dir"] == "(given)"
    assert "out_dir" not in data["settings"] and "reused" not in data["layers"][0]
    assert data["host_tools"]["pip"] and data["git"]["commit"]


@tools("sfdisk", "mke2fs", "debugfs")
def test_usb_image_is_the_same_bytes_when_made_again(tmp_path):
    """mke2fs draws the filesystem's UUID and hash seed at random and -d copies persistence.conf's ctime."""
    digests = []
    for side in ("a", "b"):
        image = tmp_path / side / "stick.img"
        image.parent.mkdir()
        with open(image, "wb") as f:
            f.truncate(3 * 2**20)
        subprocess.run(
            ["sfdisk", "-q", str(image)], input="label-id: 0x1234abcd\nstart=2048, size=2048, type=83\n", text=True
        )
        usb.add_persistence(image, 8, tmp_path / side, epoch=1700000000)
        digests.append(sha256_file(image))
        time.sleep(1.1)  # the second file's ctime is another second
    assert digests[0] == digests[1]


@tools("grub-mkimage", "mkfs.vfat", "mcopy")
def test_boot_images_are_the_same_bytes_when_made_again(tmp_path):
    """The ESP (a FAT image) keeps BOOTX64.EFI's time: the epoch's, not the moment grub-mkimage wrote it."""
    made = []
    for side in ("a", "b"):
        ctx = make_ctx(tmp_path / side)
        ctx.work.mkdir()
        boot.make_bootloader(ctx)
        made.append({k: sha256_file(ctx.files[k]) for k in ("bios_img", "efi_bin", "efi_img", "grub_cfg")})
        time.sleep(2.1)  # FAT keeps times in 2-second steps
    assert made[0] == made[1]


def test_wheelhouse_from_a_manifest_checks_each_wheel(tmp_path, monkeypatch):
    """A published manifest's wheels fetched by name==version (here from a local index) and checked by sha256."""
    index = tiny_wheel(tmp_path / "index").parent
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    wheel = {"name": "tinypkg", "version": "1.0", "file": "tinypkg-1.0-py3-none-any.whl"}
    published = tmp_path / "x.manifest.json"
    published.write_text(json.dumps({"settings": {"python_version": "3.13"}, "wheels": [{**wheel, "sha256": "0"}]}))
    with pytest.raises(reproduce.BuildError, match="tinypkg-1.0-py3-none-any.whl"):
        reproduce.fetch_wheelhouse(published, tmp_path / "wrong", log=lambda *a, **k: None)
    good = {**wheel, "sha256": sha256_file(index / wheel["file"])}
    published.write_text(json.dumps({"settings": {"python_version": "3.13"}, "wheels": [good]}))
    got = reproduce.fetch_wheelhouse(published, tmp_path / "house", log=lambda *a, **k: None)
    assert [p.name for p in got] == [wheel["file"]] and sha256_file(got[0]) == good["sha256"]


def test_base_layer_gets_fixed_files_not_the_build_hosts(tmp_path):
    """mmdebstrap copies the host's resolv.conf (its name server, its mode) and hostname into the rootfs."""
    from imagebuilder import rootfs

    root = write_tree(tmp_path / "root", {"etc/resolv.conf": "nameserver 10.1.2.3\n", "etc/hostname": "buildhost\n"})
    (root / "etc/resolv.conf").chmod(0o755)
    rootfs.write_fixed_files(root)
    assert (root / "etc/hostname").read_text() == "ocr-appliance\n"
    assert reproduce.find_host_paths(root, ["10.1.2.3", "buildhost"]) == []
    assert {oct(p.stat().st_mode & 0o777) for p in (root / "etc").iterdir()} == {"0o644"}
