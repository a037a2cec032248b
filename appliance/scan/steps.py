"""One file's state machine, each step recorded in the ledger before it is taken:

    claiming -> queued -> working -> publishing -> moving -> done          (failing -> failed on the way)

- claiming: the file is moved (a stick's file: copied) into ROOT/.state/work, so the inbox can change freely and a
  pulled stick loses nothing;
- working: the recognizer (the job queue) recognises it, or finds the cached result of the same bytes; the output
  name (with a suffix on a clash) and formats are chosen and recorded;
- publishing: the outputs are written from the queue's result under temporary names, fsynced, renamed into place, so
  a rerun rewrites its own files and never makes a second set;
- moving: the original goes to done/.

Every step can be repeated safely, so `advance` is both the normal path and the recovery after kill -9 or a power
cut. A file whose work was interrupted `MAX_ATTEMPTS` times goes to failed/ instead of looping forever.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from pathlib import Path

from appliance import export
from appliance.files import copy_atomic, fsync_dir, fsync_file, sha256_file, write_atomic
from appliance.messages import Text, message_of
from appliance.ocr.errors import EngineUnavailable, OcrError
from appliance.scan.folders import FOLDERS, task_of
from appliance.scan.ledger import FINISHED, Ledger, formats
from appliance.scan.trees import Tree, exists, inside

log = logging.getLogger("appliance.scan")

MAX_ATTEMPTS = 3  # a file whose processing kills the watcher this often is parked in failed/


class Steps:
    """The steps of the state machine. The watcher (a subclass) provides `ledger`, `local` (ROOT's tree), `sticks`
    (mount folder -> Tree of the sticks present), `recognizer` and `outputs`."""

    ledger: Ledger
    local: Tree
    sticks: dict
    recognizer: object
    outputs: tuple

    def row(self, row_id: int):
        return self.ledger.row(row_id)

    def set(self, row_id: int, **columns) -> None:
        self.ledger.set(row_id, **columns)

    def tree_of(self, row) -> Tree:
        if not row["tree"]:
            return self.local
        return self.sticks.get(row["tree"]) or Tree.usb(Path(row["tree"]))

    def advance(self, row_id: int, claim_only: bool = False) -> None:
        """Run one file's state machine from wherever it stands. Each step is safe to repeat after a crash."""
        first = True
        while True:
            row = self.row(row_id)
            state = row["state"]
            if state in FINISHED or (claim_only and state != "claiming"):
                return
            try:
                if state == "working" and first:
                    self._count_attempt(row)  # resuming work a previous run started (and maybe died of)
                    row = self.row(row_id)
                    if row["state"] != "working":
                        continue
                first = False
                step = getattr(self, f"_step_{state}")
                step(row)
            except EngineUnavailable:
                raise  # not the file's fault: stop, say why (systemd restarts the service)
            except OcrError as error:
                self.fail(row_id, message_of(error))
            except OSError as error:
                if state == "claiming":
                    self.lost(row, Text("scan_copy_failed", error=str(error.strerror or error)))
                    return
                raise

    def _step_claiming(self, row) -> None:
        source, work, tree = Path(row["source"]), Path(row["work"]), self.tree_of(row)
        if not work.exists():
            if not source.exists() or source.is_symlink():
                self.lost(row, Text("scan_disappeared_stick" if tree.stick else "scan_disappeared_inbox"))
                return
            if tree.stick:
                copy_atomic(source, work)  # copy, never move: the original stays on the stick until results exist
            else:
                try:
                    os.rename(source, work)
                except OSError as error:
                    if error.errno != errno.EXDEV:
                        raise
                    copy_atomic(source, work)  # the inbox is another file system (a mounted share)
                    source.unlink()
                fsync_dir(source.parent)
            fsync_dir(work.parent)
        elif not tree.stick and source.is_file() and sha256_file(source) == sha256_file(work):
            source.unlink()  # a cross-device move cut short between the copy and the delete: finish it
        self.set(row["id"], state="queued", sha256=sha256_file(work), size=work.stat().st_size)

    def _step_queued(self, row) -> None:
        # The attempt is counted in the same commit, BEFORE the work: a file that kills us is counted.
        self.set(row["id"], state="working", attempts=row["attempts"] + 1)

    def _count_attempt(self, row) -> None:
        attempts = row["attempts"] + 1
        self.set(row["id"], attempts=attempts)
        if attempts > MAX_ATTEMPTS:
            self.fail(row["id"], Text("scan_parked", n=MAX_ATTEMPTS))

    def _step_working(self, row) -> None:
        name = Path(row["rel"]).name
        started = time.perf_counter()
        done = self.recognizer.recognize(Path(row["work"]), FOLDERS[row["folder"].lower()], name)
        if done.reused:
            log.info("%s: same bytes already recognised; reusing that result", row["rel"])
        else:
            log.info("%s: recognised in %.1f s", row["rel"], time.perf_counter() - started)
        if row["out_stem"]:  # back from publishing (its result was gone): the name chosen then stays
            out_dir, stem = Path(row["out_dir"]), row["out_stem"]
        else:
            out_dir = self._output_dir(row)
            stem = export.free_stem(out_dir, Path(name).stem)
        self.set(
            row["id"],
            state="publishing",
            out_dir=str(out_dir),
            out_stem=stem,
            formats=",".join(self.outputs),
            reused=int(done.reused),
            engine=self.recognizer.describe(),
            job=done.job,
        )

    def _step_publishing(self, row) -> None:
        tree = self.tree_of(row)
        if tree.stick and not tree.present():
            self._fallback(row, "outbox")
            row = self.row(row["id"])
        try:
            result = self.recognizer.result(row["job"])
        except LookupError as gone:  # deleted from the UI's history meanwhile, or a ledger from an older image
            log.warning("%s: %s; recognising it again", row["rel"], gone)
            self.set(row["id"], state="working")
            return
        result.source = Path(row["rel"]).name
        try:
            export.write_outputs(result, Path(row["work"]), Path(row["out_dir"]), row["out_stem"], formats(row))
        except OSError:
            if tree.stick and not tree.present():
                return  # pulled while writing: the next pass writes to the local fallback
            raise
        final = self._original_home(row, "done")
        self.set(row["id"], state="moving", final=str(final))

    def _step_moving(self, row) -> None:
        self._move_original(row)
        self.set(row["id"], state="done")
        log.info(
            "done %s -> %s/%s.{%s}%s",
            row["rel"],
            row["out_dir"],
            row["out_stem"],
            ",".join(formats(row)),
            " (result reused)" if row["reused"] else "",
        )

    def _step_failing(self, row) -> None:
        final = Path(row["final"])
        final.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "file": row["rel"],
            "reason": row["error"],
            "message": json.loads(row["message"]) if row["message"] else None,  # the reason's id and values
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "engine": self.recognizer.describe(),
            "task": task_of(row["folder"]),
            "sha256": row["sha256"],
            "attempts": row["attempts"],
        }
        write_atomic(
            final.with_name(final.name + ".error.json"),
            (json.dumps(report, ensure_ascii=False, indent=2) + "\n").encode(),
        )
        self._move_original(row)
        self.set(row["id"], state="failed")
        log.warning("failed %s -> %s: %s", row["rel"], final, row["error"])

    # -- ends and places --

    def fail(self, row_id: int, reason: str) -> None:
        row = self.row(row_id)
        if row["state"] in FINISHED:
            return
        self.set(row_id, state="failing", error=reason, final=str(self._original_home(row, "failed")))
        self._step_failing(self.row(row_id))

    def lost(self, row, why: str) -> None:
        self.set(row["id"], state="lost", note=why)
        log.warning("%s: %s", row["rel"], why)

    def _output_dir(self, row) -> Path:
        tree = self.tree_of(row)
        if tree.stick and not tree.present():
            return self._fallback(row, "outbox")
        return tree.outbox / Path(row["rel"]).parent

    def _fallback(self, row, kind: str) -> Path:
        """Where a pulled stick's results and originals go: ROOT/outbox/<stick>/, ROOT/done/<stick>/ ..."""
        tree = self.tree_of(row)
        base = {"outbox": self.local.outbox, "done": self.local.done, "failed": self.local.failed}[kind]
        folder = base / f"usb-{tree.label}" / Path(row["rel"]).parent
        if kind == "outbox" and row["out_dir"] != str(folder):
            note = Text("scan_stick_pulled", stick=tree.label, folder=str(folder))
            log.warning("%s: %s", row["rel"], note)
            stem = export.free_stem(folder, Path(row["rel"]).stem)
            self.set(row["id"], out_dir=str(folder), out_stem=stem, note=note)
        return folder

    def _original_home(self, row, kind: str) -> Path:
        """A free name in done/ or failed/ for the original (the stick's own folders while it is present)."""
        tree = self.tree_of(row)
        if tree.stick and tree.present() and Path(row["source"]).exists():
            folder = (tree.done if kind == "done" else tree.failed) / Path(row["rel"]).parent
        elif tree.stick:
            folder = self._fallback(row, kind)
        else:
            folder = (self.local.done if kind == "done" else self.local.failed) / Path(row["rel"]).parent
        name = Path(row["rel"]).name
        stem, suffix = Path(name).stem, Path(name).suffix
        candidate, n = folder / name, 0
        while candidate.exists() or candidate.is_symlink() or Path(f"{candidate}.error.json").exists():
            n += 1
            candidate = folder / f"{stem}-{n}{suffix}"
        return candidate

    def _move_original(self, row) -> None:
        """Move the original to row.final. A stick's original moves on the stick and our copy is dropped; a local
        file (or a pulled stick's copy) moves from the work folder. Repeating after a crash is harmless."""
        final, tree = Path(row["final"]), self.tree_of(row)
        work = Path(row["work"]) if row["work"] else None
        source = Path(row["source"])
        on_stick = tree.stick and inside(final, tree.key)
        if on_stick and not exists(source) and not exists(final):
            # The stick went away after the destination was chosen: keep our copy here instead.
            final = self._original_home(row, "done" if row["state"] == "moving" else "failed")
            self.set(row["id"], final=str(final))
            on_stick = False
        origin = source if on_stick or work is None else work
        if exists(origin):
            final.parent.mkdir(parents=True, exist_ok=True)
            if exists(final):
                raise OSError(f"{final} appeared meanwhile; not overwriting it")
            os.rename(origin, final)
            fsync_file(final)  # FAT: the new directory entry gets the file's size only now
            fsync_dir(final.parent)
        if work is not None and origin != work and exists(final) and work.exists():
            work.unlink()  # the original is safe on the stick; this was only our copy
