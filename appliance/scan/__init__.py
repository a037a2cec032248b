"""Scan-to-folder: files dropped in ROOT/inbox (or a USB stick's OCR-INBOX) come out as txt/md/json/pdf in the outbox.

    ROOT/inbox/[FOLDER/]scan.jpg  ->  ROOT/outbox/[FOLDER/]scan.{pdf,md,txt,json}   original -> ROOT/done/[FOLDER/]
                                                                                 or -> ROOT/failed/ + .error.json
The inbox subfolder picks the task; an unknown subfolder is reported and left alone. Which outbox files are written
is the `outputs` choice (default: every format of `appliance.export`).

One module per job:
    folders     inbox subfolder -> task table, names that are never input
    trees       ROOT's folders or a USB stick's; finding sticks under the media folders
    recognizer  the Recognizer protocol; JobsRecognizer, through the one job queue (whose cache is the only one)
    ledger      the SQLite ledger of file states (ROOT/.state/ledger.sqlite)
    steps       one file's state machine: claim, queue, work, publish, move, fail
    watcher     readiness, claiming, the loop, recovery after a crash, the status file
    inotify     waking up early on file system events
    status      what the UI shows: queue_state, ledger_rows
    retry       retry_failed
    runner      run (`appliance watch ROOT`) and WatcherThread (inside the web app)
"""

from appliance.scan.folders import FOLDERS, IGNORED_DIRS, folder_requests, ignored
from appliance.scan.ledger import ACTIVE, open_ledger
from appliance.scan.recognizer import JobsRecognizer, Recognized, Recognizer, local_jobs
from appliance.scan.retry import Retried, retry_failed
from appliance.scan.runner import WatcherThread, run
from appliance.scan.status import ledger_rows, queue_state
from appliance.scan.steps import MAX_ATTEMPTS
from appliance.scan.trees import MEDIA_DIRS, STICK_DONE, STICK_FAILED, STICK_INBOX, STICK_OUTBOX, Tree, find_sticks
from appliance.scan.watcher import GIVE_UP_SECONDS, QUIET_SECONDS, RESCAN_SECONDS, Watcher, WatchError

__all__ = [
    "ACTIVE",
    "FOLDERS",
    "GIVE_UP_SECONDS",
    "IGNORED_DIRS",
    "MAX_ATTEMPTS",
    "MEDIA_DIRS",
    "QUIET_SECONDS",
    "RESCAN_SECONDS",
    "STICK_DONE",
    "STICK_FAILED",
    "STICK_INBOX",
    "STICK_OUTBOX",
    "JobsRecognizer",
    "Recognized",
    "Recognizer",
    "Retried",
    "Tree",
    "WatchError",
    "Watcher",
    "WatcherThread",
    "find_sticks",
    "folder_requests",
    "ignored",
    "ledger_rows",
    "local_jobs",
    "open_ledger",
    "queue_state",
    "retry_failed",
    "run",
]
