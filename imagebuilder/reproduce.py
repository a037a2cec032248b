"""Is the image reproducible? Two builds compared byte for byte, and on a difference, where it is.

`appliance build --verify-reproducible` (`make reproduce`) builds the image twice, each with its own empty cache and
output folder; the second from a fresh clone of the commit (another checkout path), under umask 077 and another
locale and time zone. It then compares the ISOs' (and .img's) sha256. On a difference it names the ISO files that
differ, and for a layer (squashfs) the files inside it, by unpacking both (unsquashfs) and comparing the file lists
with each file's sha256, mode, owner and link target; Debian's diffoscope, when installed, then shows the bytes.
It also searches every layer for the two builds' host paths (cache, output, checkout): none may be in the image.

`python3 -m imagebuilder.reproduce compare A B` compares two output folders or two ISOs, e.g. a published ISO
against a rebuild from the same commit (README: "Checking a published ISO").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from appliance.files import sha256_file
from imagebuilder import pyenv
from imagebuilder.context import BuildError, git_commit, remove_tree, run
from imagebuilder.settings import REPO, resolve

SHOWN = 40  # differing files listed per layer; the rest are counted
OTHER_UMASK = 0o077  # the second build's; its locale and time zone: other_host_env()


@dataclass
class TreeDiff:
    """How tree B differs from tree A: paths only in one, and paths in both that differ (and in what)."""

    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    changed: list[tuple[str, str]] = field(default_factory=list)  # (path, "content" / "mode 644 -> 600" ...)

    def __bool__(self) -> bool:
        return bool(self.only_a or self.only_b or self.changed)

    def lines(self, limit: int = SHOWN) -> list[str]:
        rows = (
            [f"only in A: {p}" for p in self.only_a]
            + [f"only in B: {p}" for p in self.only_b]
            + [f"differs:   {p} ({what})" for p, what in self.changed]
        )
        return rows[:limit] + ([f"... and {len(rows) - limit} more"] if len(rows) > limit else [])


def scan_tree(root: Path) -> dict[str, dict]:
    """{relative path: facts} for every entry under root (links not followed): type, mode, owner, and a file's
    sha256 or a link's target. What two trees must agree on to be the same layer."""
    entries = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            facts = {"mode": f"{stat.S_IMODE(st.st_mode):o}", "owner": f"{st.st_uid}:{st.st_gid}"}
            if stat.S_ISLNK(st.st_mode):
                facts["link"] = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                facts["sha256"] = sha256_file(p)
            elif stat.S_ISDIR(st.st_mode):
                facts["type"] = "dir"
            else:  # device nodes, fifos
                facts["type"] = f"special {stat.S_IFMT(st.st_mode):o} {st.st_rdev}"
            entries[p.relative_to(root).as_posix()] = facts
    return entries


def diff_trees(a: dict[str, dict], b: dict[str, dict]) -> TreeDiff:
    """Compare two scan_tree() results."""
    diff = TreeDiff(only_a=sorted(a.keys() - b.keys()), only_b=sorted(b.keys() - a.keys()))
    for path in sorted(a.keys() & b.keys()):
        fa, fb = a[path], b[path]
        if fa == fb:
            continue
        kinds = [k for k in ("type", "link", "sha256") if fa.get(k) != fb.get(k)]
        what = ["content" if k == "sha256" else k for k in kinds]
        what += [f"{k} {fa[k]} -> {fb[k]}" for k in ("mode", "owner") if fa[k] != fb[k]]
        diff.changed.append((path, ", ".join(what)))
    return diff


def unpack_iso(iso: Path, dest: Path) -> Path:
    run(["xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/", dest])
    return dest


def unpack_layer(squashfs: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    run(["unsquashfs", "-q", "-n", "-d", dest, squashfs])  # as root: owners and device nodes as they are
    return dest


def diffoscope_lines(pairs: list[tuple[Path, Path]], shown: int = 3) -> list[str]:
    """What differs inside the first few differing files, from diffoscope if it is installed; else how to get it."""
    if not pairs:
        return []
    if not shutil.which("diffoscope"):
        a, b = pairs[0]
        return [
            "diffoscope is not installed (apt-get install diffoscope-minimal); it shows what differs inside a file:",
            f"  diffoscope {a} {b}",
        ]
    lines = []
    for a, b in pairs[:shown]:
        out = subprocess.run(["diffoscope", "--text", "-", a, b], capture_output=True, text=True).stdout.splitlines()
        lines += out[:60] + ([f"... ({len(out) - 60} more lines)"] if len(out) > 60 else [])
    return lines


def explain_iso_difference(iso_a: Path, iso_b: Path, work: Path) -> list[str]:
    """Which ISO files differ and, for layers, which files inside them (both unpacked under `work`)."""
    tree_a, tree_b = unpack_iso(iso_a, work / "a" / "iso"), unpack_iso(iso_b, work / "b" / "iso")
    top = diff_trees(scan_tree(tree_a), scan_tree(tree_b))
    if not top:
        return [
            "every file in the two ISOs is the same: the difference is in the ISO's own structures "
            "(volume descriptors and dates, El Torito boot records, the appended EFI partition: iso.py, boot.py)",
            *diffoscope_lines([(iso_a, iso_b)]),
        ]
    lines = ["ISO files:", *("  " + line for line in top.lines())]
    if any(p == "boot.catalog" for p, _ in top.changed):
        lines.append("  (boot.catalog holds block addresses: it follows any file whose size changed)")
    inside = []  # (a, b) of files whose bytes differ, for diffoscope
    for path, what in top.changed:
        if "content" not in what or path in ("boot.catalog", "sha256sum.txt"):
            continue
        if not path.endswith(".squashfs"):
            inside.append((tree_a / path, tree_b / path))
            continue
        name = Path(path).stem
        layer_a = unpack_layer(tree_a / path, work / "a" / "layers" / name)
        layer_b = unpack_layer(tree_b / path, work / "b" / "layers" / name)
        diff = diff_trees(scan_tree(layer_a), scan_tree(layer_b))
        lines.append(f"layer {path}: {'no file differs (squashfs metadata)' if not diff else 'files:'}")
        lines += ["  " + line for line in diff.lines()]
        inside += [(layer_a / rel, layer_b / rel) for rel, what in diff.changed if "content" in what]
    return lines + diffoscope_lines(inside)


def host_needles(paths: list[Path | str], resolv_conf: Path = Path("/etc/resolv.conf")) -> list[str]:
    """The strings that give a build host away: its folders as given and resolved, its name servers, the user who
    ran sudo, and the host's name (names only when long enough not to turn up by chance in binary files)."""
    needles = set()
    for p in paths:
        for form in (str(p), str(Path(p).resolve())):
            if len(form.rstrip("/")) > 1:
                needles.add(form.rstrip("/"))
    try:
        for line in resolv_conf.read_text().splitlines():
            words = line.split()
            if len(words) > 1 and words[0] == "nameserver" and not words[1].startswith(("127.", "::1")):
                needles.add(words[1])
    except OSError:
        pass
    for name in (socket.gethostname(), os.environ.get("SUDO_USER", "")):
        if len(name) >= 6:
            needles.add(name)
    return sorted(needles)


def find_host_paths(root: Path, needles: list[str], skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """[(file, needle)] for every regular file under root (but names ending in `skip`) whose bytes hold a needle."""
    found = []
    raw = [(n, n.encode()) for n in needles]
    for dirpath, _, filenames in os.walk(root):
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.is_symlink() or not p.is_file() or name.endswith(skip):
                continue
            data = p.read_bytes()
            found += [(p.relative_to(root).as_posix(), n) for n, b in raw if b in data]
    return sorted(found)


def scan_layers_for_host_paths(iso_tree: Path, work: Path, needles: list[str]) -> list[str]:
    """Unpack every layer of an unpacked ISO and search it (and the ISO's own files) for the needles."""

    def by_file(found: list[tuple[str, str]], where: str) -> list[str]:
        files: dict[str, list[str]] = {}
        for rel, needle in found:
            files.setdefault(rel, []).append(needle)
        return [f"{where}: {rel}: {', '.join(needles)}" for rel, needles in files.items()]

    hits = by_file(find_host_paths(iso_tree, needles, skip=(".squashfs",)), "ISO")
    for layer in sorted((iso_tree / "live").glob("*.squashfs")):
        tree = work / "scan" / layer.stem
        if not tree.exists():
            unpack_layer(layer, tree)
        hits += by_file(find_host_paths(tree, needles), layer.name)
        remove_tree(tree)
    return hits


def images_in(place: Path) -> dict[str, Path]:
    """{file name: path} of the .iso and .img files of an output folder, or the one file given."""
    if place.is_file():
        return {place.name: place}
    return {p.name: p for p in sorted(place.iterdir()) if p.suffix in (".iso", ".img")}


def compare(a: Path, b: Path, work: Path, host_paths: list[Path | str] = (), log=print) -> bool:
    """True when every ISO/.img of A has the same sha256 in B; else print where they differ. With host_paths,
    also search A's first ISO's layers for them (they are B's too when the ISOs are the same)."""
    files_a, files_b = images_in(a), images_in(b)
    if len(files_a) == 1 and len(files_b) == 1 and a.is_file() and b.is_file():
        files_b = {next(iter(files_a)): next(iter(files_b.values()))}  # two ISOs of any names
    if not files_a:
        raise BuildError(f"{a}: no .iso or .img to compare")
    same = True
    for name, path_a in files_a.items():
        path_b = files_b.get(name)
        if path_b is None:
            log(f"{name}: only in {a}")
            same = False
            continue
        sum_a, sum_b = sha256_file(path_a), sha256_file(path_b)
        log(f"{name}: A {sum_a}\n{' ' * len(name)}  B {sum_b}  {'SAME' if sum_a == sum_b else 'DIFFERENT'}")
        if sum_a != sum_b:
            same = False
            if name.endswith(".iso"):
                for line in explain_iso_difference(path_a, path_b, work / Path(name).stem):
                    log("  " + line)
            else:
                log("  the .img is the ISO plus the persistence partition: with the same ISOs, that is it (usb.py)")
    if a.is_dir() and b.is_dir():
        same = compare_manifests(a, b, log) and same
    if host_paths:
        iso = next((p for n, p in files_a.items() if n.endswith(".iso")), None)
        if iso:
            needles = host_needles(list(host_paths))
            tree = work / "host-scan" / "iso"
            if not tree.exists():
                unpack_iso(iso, tree)
            hits = scan_layers_for_host_paths(tree, work / "host-scan", needles)
            log(f"build-host paths in {iso.name}'s layers ({', '.join(needles)}): " + ("none" if not hits else ""))
            for hit in hits[:SHOWN]:
                log("  " + hit)
            if len(hits) > SHOWN:
                log(f"  ... and {len(hits) - SHOWN} more files")
            same = same and not hits
    return same


def compare_manifests(a: Path, b: Path, log=print) -> bool:
    """Two builds of one commit write the same manifest: say which of its keys differ, if any."""
    same = True
    for path_a in sorted(a.glob("*.manifest.json")):
        path_b = b / path_a.name
        if path_b.exists():
            facts_a, facts_b = json.loads(path_a.read_text()), json.loads(path_b.read_text())
            keys = [k for k in sorted(facts_a.keys() | facts_b.keys()) if facts_a.get(k) != facts_b.get(k)]
            log(f"{path_a.name}: " + ("SAME" if not keys else f"DIFFERENT in {', '.join(keys)}"))
            same = same and not keys
    return same


def build_command(side: Path, profile: str, overrides, model, accept_model_license) -> list[str]:
    cmd = [sys.executable, "-m", "appliance", "build", "--profile", profile]
    cmd += ["--cache", str(side / "cache"), "--out", str(side / "out")]
    for o in overrides:
        cmd += ["--set", o]
    if model:
        cmd += ["--model", str(Path(model).resolve())]
    if accept_model_license:
        cmd.append("--accept-model-license")
    return cmd


def other_host_env() -> dict:
    """The second build's environment: another language and time zone than the first's (the tools must not care)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LC_") and k not in ("LANG", "LANGUAGE")}
    return {**env, "LANG": "fr_FR.UTF-8", "LANGUAGE": "fr", "TZ": "Asia/Shanghai"}


def checkout_for_b(root: Path, log=print) -> Path:
    """A fresh clone of this commit at another path, or this checkout when it has uncommitted changes."""
    facts = git_commit(REPO)
    if not facts["commit"] or facts["dirty"]:
        log("the checkout has uncommitted changes: both builds use it (another checkout path is not tried)")
        return REPO
    src = root / "b" / "src"
    remove_tree(src)
    run(["git", "clone", "-q", "--no-hardlinks", REPO, src])
    run(["git", "-C", src, "checkout", "-q", "--detach", facts["commit"]])
    return src


def build_twice(
    profile: str = "cpu",
    overrides=(),
    model=None,
    out_dir: str | None = None,
    accept_model_license: bool | None = None,
    log=print,
) -> bool:
    """Two clean builds (own caches and outputs; B from another checkout, umask and locale), then compare()."""
    resolve(profile, list(overrides), model_dir=model, accept_model_license=accept_model_license)  # fail fast
    root = Path(out_dir or REPO / "out" / "reproduce").resolve()
    sources = {"a": REPO, "b": checkout_for_b(root, log)}
    for name in ("a", "b"):
        side = root / name
        for d in ("cache", "out"):
            remove_tree(side / d)  # clean builds: nothing downloaded or built before is reused
        env, umask = (dict(os.environ), 0o022) if name == "a" else (other_host_env(), OTHER_UMASK)
        cmd = build_command(side, profile, overrides, model, accept_model_license)
        log(f"build {name.upper()} (umask {umask:03o}, LANG={env.get('LANG', '')}, checkout {sources[name]}):")
        log("  " + " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, cwd=sources[name], env=env, preexec_fn=lambda u=umask: os.umask(u))
        if proc.returncode != 0:
            raise BuildError(f"build {name.upper()} failed (exit {proc.returncode}): see its output above")
    work = root / "compare"
    remove_tree(work)
    try:
        hosts = [p for name in ("a", "b") for p in (root / name / "cache", root / name / "out", sources[name])]
        same = compare(root / "a" / "out", root / "b" / "out", work, hosts, log)
    finally:
        remove_tree(work)
    log("reproducible: the two builds are the same, bit for bit" if same else "NOT reproducible: see above")
    return same


def fetch_wheelhouse(manifest_path: Path, dest: Path, log=print) -> list[Path]:
    """The exact wheels a published image holds, from its manifest: each name==version downloaded for the image's
    Python and checked against the manifest's sha256. `--set wheelhouse=DEST` then rebuilds with exactly these
    (pyproject.toml's ranges would resolve to newer releases by then)."""
    facts = json.loads(manifest_path.read_text())
    target = pyenv.python_target(facts["settings"]["python_version"])
    wanted = {w["file"]: w for w in facts["wheels"]}
    dest.mkdir(parents=True, exist_ok=True)
    pins = [f"{w['name']}=={w['version']}" for w in wanted.values()]
    log(f"downloading {len(pins)} wheels into {dest}", flush=True)
    run([*pyenv.PIP, "download", "-q", "--no-deps", "-d", dest, *target, *pins])
    wrong = [
        name for name, w in wanted.items() if not (dest / name).exists() or sha256_file(dest / name) != w["sha256"]
    ]
    if wrong:
        raise BuildError(f"not the manifest's wheel (missing or another sha256): {', '.join(sorted(wrong))}")
    return [dest / name for name in sorted(wanted)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m imagebuilder.reproduce", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser("compare", help="compare two output folders (or two ISOs): sha256, then where they differ")
    cmp.add_argument("a", type=Path)
    cmp.add_argument("b", type=Path)
    cmp.add_argument("--host-path", action="append", default=[], help="also search the layers for this path")
    cmp.add_argument("--work", type=Path, help="where to unpack (default: a temporary folder under /var/tmp)")
    wh = sub.add_parser("wheelhouse", help="download a published image's exact wheels (for --set wheelhouse=DIR)")
    wh.add_argument("manifest", type=Path, help="the image's <name>.manifest.json")
    wh.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    if args.command == "wheelhouse":
        try:
            print(f"{len(fetch_wheelhouse(args.manifest, args.dest))} wheels, each as the manifest says: {args.dest}")
            return 0
        except BuildError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    work = args.work or Path("/var/tmp") / f"reproduce-{os.getpid()}"
    try:
        return 0 if compare(args.a, args.b, work, args.host_path) else 1
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if not args.work:
            remove_tree(work)


if __name__ == "__main__":
    sys.exit(main())
