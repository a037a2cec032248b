"""Linux inotify through ctypes, only to wake the watcher early: a full rescan runs anyway (network and FAT file
systems send no events)."""

from __future__ import annotations

import os
import select
import time
from pathlib import Path


class Inotify:
    """Linux inotify through ctypes: any event in a watched folder wakes `wait()`. Without it, `wait` just sleeps."""

    MASK = 0x8 | 0x80 | 0x100 | 0x40 | 0x200 | 0x4  # close-write, moved-to, create, moved-from, delete, attrib

    def __init__(self):
        self.fd, self.watched = None, set()
        try:
            import ctypes

            self.libc = ctypes.CDLL(None, use_errno=True)
            fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            self.fd = fd if fd >= 0 else None
        except (OSError, AttributeError):
            self.fd = None

    def add(self, folder: Path) -> None:
        if self.fd is None or folder in self.watched or len(self.watched) > 4096:
            return
        if self.libc.inotify_add_watch(self.fd, os.fsencode(folder), self.MASK) >= 0:
            self.watched.add(folder)

    def wait(self, timeout: float, stop=lambda: False) -> None:
        """Until an event, `timeout` seconds, or stop() (checked every second: a signal does not cut a poll short)."""
        deadline = time.monotonic() + timeout
        poller = None
        if self.fd is not None:
            poller = select.poll()
            poller.register(self.fd, select.POLLIN)
        while not stop():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if poller is None:
                time.sleep(min(left, 1.0))
            elif poller.poll(min(left, 1.0) * 1000):
                time.sleep(0.05)  # let a burst of events arrive, then drain them all at once
                try:
                    while os.read(self.fd, 65536):
                        pass
                except BlockingIOError:
                    pass
                break
        self.watched = {f for f in self.watched if f.exists()}  # re-added on the next scan if recreated

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
