"""A folder watched with watchdog: any change below it raises a flag the screen reads on its timer.

A flag rather than a message per file event because a training run rewrites its store
many times a second; the screen rescans at most once per tick, however many events came.
"""

from __future__ import annotations

import threading
from pathlib import Path

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer


class _Flag(FileSystemEventHandler):
    def __init__(self, flag: threading.Event):
        self.flag = flag

    def on_any_event(self, event) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return  # reads (ours included) are not changes
        self.flag.set()


class FolderWatch:
    def __init__(self, path: str | Path, recursive: bool = True):
        self.path = Path(path)
        self.recursive = recursive
        self.changed = threading.Event()
        self._observer: Observer | None = None

    def start(self) -> "FolderWatch":
        if self.path.is_dir() and self._observer is None:
            self._observer = Observer()
            self._observer.daemon = True
            self._observer.schedule(_Flag(self.changed), str(self.path), recursive=self.recursive)
            try:
                self._observer.start()
            except OSError:  # out of inotify watches: the screen's slow periodic rescan still works
                self._observer = None
        return self

    def take(self) -> bool:
        """True once per burst of changes."""
        if self.changed.is_set():
            self.changed.clear()
            return True
        return False

    def stop(self) -> None:
        obs, self._observer = self._observer, None
        if obs is not None:
            obs.stop()
            obs.join(timeout=2)
