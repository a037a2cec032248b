"""The image's runtime config: /etc/appliance/config.json read into one typed object, and the run-time defaults.

The image builder writes config.json from the `image=True` rows of the settings table (plus the model directory of
gpu images); this module is the only reader. The web app (`webui`), `appliance serve`, the scan folder's outputs and
the CLI's defaults all take their values from `load()`. On a machine without an image (a developer's host, the
tests) the file is absent and the defaults below apply. The LAN token is never here: it reaches `serve` through the
root-only lan.env, in the environment.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields
from pathlib import Path

from appliance.export import FORMATS
from appliance.ocr.tasks import DEFAULT_TASK, Task

log = logging.getLogger(__name__)

CONFIG_PATH = Path("/etc/appliance/config.json")
DATA_DIR = Path("/srv/ocr")  # jobs, results, history, scan folders: the image's persistence union target
SCAN_DIR = DATA_DIR / "scan"  # the image's scan folder (`serve --scan`)


@dataclass(frozen=True)
class Runtime:
    """What the appliance does at run time. Every `image=True` setting is a field (tests/test_runtime.py checks)."""

    language: str | None = None  # UI language; None: the browser's choice (no image config)
    default_task: str = DEFAULT_TASK.value  # preselected in the UI, and the API's task when a caller names none
    outputs: tuple[str, ...] = FORMATS  # export formats offered by the UI, the API's default, the scan folder's files
    engine: str = "auto"  # `serve`'s engine unless --engine is given
    lan: bool = False  # serve on every address (LAN mode) instead of loopback, unless --host is given
    model_dir: str | None = None  # gpu images: the bundled weights (not a setting: the builder adds it)

    @property
    def listen_host(self) -> str:
        return "0.0.0.0" if self.lan else "127.0.0.1"

    @property
    def result_format(self) -> str:
        """GET /jobs/<id>/result without ?format=: the result JSON when it is offered, else the first offered."""
        return "json" if "json" in self.outputs else self.outputs[0]


def _valid(name: str, value: object) -> object:
    """`value` as the field's type, or ValueError saying why not."""
    if name == "outputs":
        if not isinstance(value, list) or not value or not all(v in FORMATS for v in value):
            raise ValueError(f"expected a non-empty list of {', '.join(FORMATS)}")
        return tuple(dict.fromkeys(value))
    if name == "lan":
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    if name == "default_task":
        Task(value)  # ValueError for a task this version does not know
    return value


def load(path: str | Path | None = None) -> Runtime:
    """The runtime config from `path` (default: the image's config.json). A missing file gives the defaults; a
    broken file or value is logged and its defaults apply: the kiosk must start whatever the file holds."""
    path = Path(path or CONFIG_PATH)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Runtime()
    except (OSError, ValueError) as error:
        log.warning("ignoring %s: %s", path, error)
        return Runtime()
    if not isinstance(data, dict):
        log.warning("ignoring %s: expected a JSON object", path)
        return Runtime()
    values = {}
    for field in fields(Runtime):
        if data.get(field.name) is None:  # absent or null: the default
            continue
        try:
            values[field.name] = _valid(field.name, data[field.name])
        except ValueError as error:
            log.warning("%s: %s: %s (got %r); using %r", path, field.name, error, data[field.name], field.default)
    return Runtime(**values)
