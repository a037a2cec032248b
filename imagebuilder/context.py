"""One build's context: settings, paths, the layers made so far, and the helpers every stage shares."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from imagebuilder.settings import REPO, Config


class BuildError(RuntimeError):
    """A stage failed for a reason worth one sentence to the user."""


@dataclass
class Layer:
    """One squashfs layer: live-boot stacks them in `order` (lowest first)."""

    name: str  # base | python | model | app
    order: int
    key: str  # hash of every input; same key -> the cached squashfs is reused
    path: Path  # the .squashfs in the cache
    epoch: int  # SOURCE_DATE_EPOCH for this layer's files
    cached: bool = False
    meta: dict = field(default_factory=dict)

    @property
    def filename(self) -> str:
        return f"{self.order:02d}-{self.name}.squashfs"


@dataclass
class Context:
    config: Config
    repo: Path
    out_dir: Path
    cache_dir: Path
    work: Path  # this build's scratch directory; removed at the end, whatever happens
    epoch: int  # SOURCE_DATE_EPOCH for every timestamp we control
    layers: list[Layer] = field(default_factory=list)
    layer_epoch: int | None = None  # while a layer is filled (layers.reuse_or_build): its epoch, for the tools
    files: dict[str, Path] = field(default_factory=dict)  # named artefacts: kernel, initrd, bios_img, efi_img, iso...
    info: dict = field(default_factory=dict)  # facts gathered for the manifest: debs, wheels, kernel version...

    @property
    def stem(self) -> str:
        c = self.config
        return f"{c.name}-{c.version}-{c.profile}"

    def layer_dir(self) -> Path:
        d = self.cache_dir / "layers"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def env(self) -> dict:
        """The tools' environment. SOURCE_DATE_EPOCH is the layer's while a layer is filled, so that a layer's
        bytes follow its key (shadow's password dates, mmdebstrap's clamping), not the time of HEAD."""
        epoch = self.epoch if self.layer_epoch is None else self.layer_epoch
        return {**tool_env(), "SOURCE_DATE_EPOCH": str(epoch)}


def tool_env() -> dict:
    """The host's environment without its language, locale and time zone: tools write the same bytes wherever they
    run (dates in logs and dpkg's files, sort orders, translated messages that end up in files)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LC_") and k not in ("LANG", "LANGUAGE", "TZ")}
    return {**env, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "TZ": "UTC"}


def run(cmd: list, ctx: Context | None = None, quiet: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a tool; on failure raise BuildError with the command and the tail of its output."""
    cmd = [str(c) for c in cmd]
    env = kw.pop("env", None) or (ctx.env() if ctx else tool_env())
    proc = subprocess.run(cmd, env=env, text=True, capture_output=quiet, **kw)
    if proc.returncode != 0:
        tail = "\n".join(((proc.stdout or "") + (proc.stderr or "")).strip().splitlines()[-25:])
        raise BuildError(f"{shlex.join(cmd[:6])}{' ...' if len(cmd) > 6 else ''} exited {proc.returncode}\n{tail}")
    return proc


def hash_inputs(*parts) -> str:
    """A stable hash of strings, dicts/lists (as canonical JSON) and files/trees (relative path, mode, bytes)."""
    h = hashlib.sha256()

    def add_path(p: Path, rel: str) -> None:
        if p.is_symlink():
            h.update(f"L {rel} {os.readlink(p)}\n".encode())
        elif p.is_dir():
            h.update(f"D {rel}\n".encode())
            for child in sorted(p.iterdir()):
                if child.name in ("__pycache__",) or child.suffix == ".pyc":
                    continue
                add_path(child, f"{rel}/{child.name}")
        elif p.exists():
            # The mode as git keeps it (executable or not): a checkout made under another umask has the same key.
            mode = "755" if p.stat().st_mode & 0o111 else "644"
            h.update(f"F {rel} {mode} {p.stat().st_size}\n".encode())
            h.update(p.read_bytes())
        else:
            h.update(f"- {rel}\n".encode())

    for part in parts:
        if isinstance(part, Path):
            add_path(part, part.name)
        elif isinstance(part, (dict, list, tuple)):
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        else:
            h.update(str(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def git_commit(repo: Path = REPO) -> dict:
    """The commit the build came from and whether the tree had uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        # Untracked files count: the app layer copies its folders whole, so one there would be in the image.
        status = subprocess.run(["git", "-C", repo, "status", "--porcelain"], capture_output=True, text=True)
        dirty = bool(status.stdout.strip())
        epoch = int(
            subprocess.run(
                ["git", "-C", repo, "log", "-1", "--format=%ct"], capture_output=True, text=True
            ).stdout.strip()
            or 0
        )
        return {"commit": commit, "dirty": dirty, "epoch": epoch}
    except (subprocess.CalledProcessError, FileNotFoundError, ValueError):
        return {"commit": None, "dirty": None, "epoch": 0}


FALLBACK_EPOCH = 1700000000  # inputs with no commit yet (a working tree edit): a constant, not "now"


def explicit_epoch(config: Config) -> int | None:
    """SOURCE_DATE_EPOCH as the source_date_epoch setting or the environment variable, if given."""
    if config.source_date_epoch is not None:
        return int(config.source_date_epoch)
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    return None


def source_date_epoch(config: Config) -> int:
    """The explicit epoch, else the time of the last commit: the ISO's own dates."""
    explicit = explicit_epoch(config)
    return explicit if explicit is not None else (git_commit()["epoch"] or FALLBACK_EPOCH)


def inputs_epoch(ctx: Context, *paths: str) -> int:
    """A layer's timestamp: the explicit epoch, else the last commit that touched the layer's inputs.

    Not the repository's HEAD time: every unrelated commit would then change every layer's bytes and key.
    """
    explicit = explicit_epoch(ctx.config)
    if explicit is not None:
        return explicit
    out = subprocess.run(
        ["git", "-C", ctx.repo, "log", "-1", "--format=%ct", "--", *paths], capture_output=True, text=True
    ).stdout.strip()
    return int(out) if out.isdigit() else FALLBACK_EPOCH


def make_context(config: Config, repo: Path = REPO) -> Context:
    out_dir = Path(config.out_dir)
    cache_dir = Path(config.cache_dir)
    if not out_dir.is_absolute():
        out_dir = repo / out_dir
    if not cache_dir.is_absolute():
        cache_dir = repo / cache_dir
    work_root = cache_dir / "work"
    work_root.mkdir(parents=True, exist_ok=True)
    remove_dead_work(work_root)
    # Work next to the cache (same filesystem as out/ by default) so publishing is a rename, not a copy.
    work = work_root / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    work.mkdir()
    return Context(
        config=config, repo=repo, out_dir=out_dir, cache_dir=cache_dir, work=work, epoch=source_date_epoch(config)
    )


def remove_dead_work(work_root: Path) -> None:
    """Work dirs of builds that were killed (power loss, SIGKILL): their chroots may still hold /proc and /sys
    mounts, which any later walk of the tree (pip's package scan, find, backup tools) descends into forever."""
    for work in work_root.iterdir():
        pid = work.name.rpartition("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            remove_tree(work)


def remove_tree(path: Path) -> None:
    """rm -rf that also copes with a chroot left with mounts (it refuses rather than deleting through them)."""
    if not path.exists():
        return
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    inside = [m for m in mounts if m == str(path) or m.startswith(str(path) + "/")]
    for m in sorted(inside, reverse=True):
        subprocess.run(["umount", "-l", m], check=False)
    shutil.rmtree(path, ignore_errors=True)
