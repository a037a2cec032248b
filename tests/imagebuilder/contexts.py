"""A build Context for unit tests: resolved settings, paths under tmp_path, a fixed epoch, and the base layer's
/etc/passwd that the app layer reads (no real build needed)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from imagebuilder import app
from imagebuilder.context import Context
from imagebuilder.settings import REPO, resolve


def make_ctx(tmp_path, profile="cpu", *overrides, model=None, accept=None, repo=REPO) -> Context:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = resolve(
        profile,
        list(overrides),
        model_dir=model,
        accept_model_license=accept,
        out_dir=str(tmp_path / "out"),
        cache_dir=str(tmp_path / "cache"),
    )
    c = Context(
        config=config,
        repo=repo,
        out_dir=tmp_path / "out",
        cache_dir=tmp_path / "cache",
        work=tmp_path / "work",
        epoch=1700000000,
    )
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0::/root:/bin/sh\nocr:x:999:999::/srv/ocr:/usr/sbin/nologin\n")
    c.files["passwd"] = passwd
    return c


HOST_UNITS = Path("/usr/lib/systemd/system")  # a Debian host's units stand in for the base layer's


def enabled_links(ctx: Context) -> dict[str, str]:
    """{link path: target} that the app layer step makes with systemctl for this context's image (real systemctl,
    the project's unit files, the host's units as the base layer's)."""
    ctx.work.mkdir(parents=True, exist_ok=True)
    tree = Path(tempfile.mkdtemp(dir=ctx.work))
    shutil.copytree(REPO / "rootfs" / app.UNIT_DIR, tree / app.UNIT_DIR)
    app.enable_units(ctx, tree, HOST_UNITS)
    return {str(p.relative_to(tree)): os.readlink(p) for p in tree.rglob("*") if p.is_symlink()}
