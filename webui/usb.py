"""The in-app browser of removable media: the kiosk has no native file dialog, so pages list USB_ROOT themselves.

Only the tree under USB_ROOT is reachable: paths are resolved and must stay inside it; symbolic links are neither
listed nor followed (a stick's link could point at the appliance's own files).
"""

from __future__ import annotations

from pathlib import Path

from appliance.messages import Text
from appliance.ocr.images import EXTENSIONS
from webui.errors import BadRequest

MAX_PATH = 4096  # Linux's PATH_MAX: anything longer is no path on a stick (and os calls fail on it)


def resolve(root: str | Path, rel: str) -> Path:
    """USB_ROOT/rel, refusing anything that leaves USB_ROOT or passes through a symbolic link."""
    if len(rel or "") > MAX_PATH:
        raise BadRequest("that path is too long for a USB stick's folder")
    base = Path(root).resolve()
    path = base
    for part in Path(rel or ".").parts:
        if part in ("/", ".", ""):
            continue
        if part == ".." or part.startswith("/"):
            raise BadRequest(f"'{rel}' is outside the USB media folder")
        path = path / part
        try:
            link = path.is_symlink()
        except OSError:  # a name too long for any filesystem, an I/O error
            raise BadRequest(f"'{rel[:200]}' is not a path on the USB stick") from None
        if link:
            raise BadRequest(f"'{rel}' is a link; pick the file itself")
    if not path.exists():
        raise BadRequest(Text("usb_gone", path=rel))
    return path


def listing(root: str | Path, rel: str = "") -> dict:
    """Folders first, then images and PDFs; hidden and system files left out."""
    base = Path(root).resolve()
    if not base.is_dir():
        return {"root": str(root), "path": "", "parent": None, "entries": [], "missing": True}
    folder = resolve(root, rel)
    if not folder.is_dir():
        raise BadRequest(f"'{rel}' is not a folder")
    entries = []
    try:
        children = sorted(folder.iterdir(), key=lambda p: (not p.is_dir(), p.name.lower()))
    except PermissionError:
        raise BadRequest(f"'{rel}' cannot be read (permission denied)") from None
    except OSError as error:  # a stick pulled while listing, an I/O error on a failing stick
        raise BadRequest(f"'{rel}' cannot be read ({error.strerror or error}); was the USB stick removed?") from None
    for child in children:
        if child.name.startswith((".", "~$")) or child.is_symlink():
            continue
        kind = "dir" if child.is_dir() else "file" if child.suffix.lower() in EXTENSIONS and child.is_file() else None
        if kind:
            entries.append(
                {
                    "name": child.name,
                    "type": kind,
                    "path": str(child.relative_to(base)),
                    "size": child.stat().st_size if kind == "file" else None,
                }
            )
    here = folder.relative_to(base)
    parent = None if folder == base else str(here.parent) if str(here.parent) != "." else ""
    return {"root": str(root), "path": "" if str(here) == "." else str(here), "parent": parent, "entries": entries}
