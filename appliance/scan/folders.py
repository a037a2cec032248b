"""The inbox's subfolders and what is asked of their files; the names that are never input."""

from __future__ import annotations

from appliance.ocr.tasks import EXTRACT_PRESETS, LANGUAGES, Request, Task


def folder_requests() -> dict[str, Request]:
    """Inbox subfolder (lower case) -> what is asked of its files. "" is the inbox itself."""
    table = {
        "": Request.make(Task.SPOTTING),
        "spotting": Request.make(Task.SPOTTING),
        "text": Request.make(Task.TEXT),
    }
    for task in (Task.DOC, Task.TABLE, Task.FORMULA, Task.CHART, Task.SUBTITLES):
        table[task.value] = Request.make(task)
    for lang in LANGUAGES:
        table[f"translate-{lang}"] = Request.make(Task.TRANSLATE, target_lang=lang)
    for preset, fields in EXTRACT_PRESETS.items():
        table[f"extract-{preset}"] = Request.make(Task.EXTRACT, fields=fields)
    return table


FOLDERS = folder_requests()

# Names that are never input: partial downloads, editor locks, OS metadata. Hidden files are skipped too.
IGNORED_SUFFIXES = (".part", ".tmp", ".crdownload", ".partial", ".swp", ".error.json")
IGNORED_PREFIXES = (".", "~$", "._")
IGNORED_NAMES = {"thumbs.db", "desktop.ini", "ehthumbs.db"}
IGNORED_DIRS = {"@eadir", "$recycle.bin", "system volume information", "lost+found"}


def ignored(name: str) -> bool:
    lower = name.lower()
    return name.startswith(IGNORED_PREFIXES) or lower.endswith(IGNORED_SUFFIXES) or lower in IGNORED_NAMES


def task_of(folder: str) -> str | None:
    """The task of a ledger row's folder, or None for a folder that is not (or no longer) in the table."""
    request = FOLDERS.get(folder.lower())
    return request.task.value if request else None
