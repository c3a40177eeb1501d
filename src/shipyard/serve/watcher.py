"""Watch the repository: filesystem events (watchdog: inotify, FSEvents, ...) trigger a sync
at once; a slower poll runs as well, and alone when events are unavailable (watchdog missing,
inotify watches exhausted, network filesystems that send no events)."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("shipyard.serve")
_READ_ONLY = frozenset({"opened", "closed_no_write"})  # watchdog event types that change nothing


class RepositoryWatcher:
    def __init__(self, repo: Path, sync: Callable[[], None], poll_seconds: float = 2.0, debounce: float = 0.05):
        self.repo = repo
        self._sync = sync
        self.poll_seconds = poll_seconds
        self.debounce = debounce
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._observer = None
        self.mode = "polling"
        self._thread = threading.Thread(target=self._loop, name="repo-watcher", daemon=True)

    def start(self) -> None:
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer

            wake = self._wake

            class _Handler(FileSystemEventHandler):
                def on_any_event(self, event) -> None:
                    # Opens and read-only closes say nothing changed, and sync() itself makes them
                    # (it reads config.json, lists directories): waking on them re-synced every
                    # debounce period, forever (12 scans a second on an idle repository).
                    if event.event_type not in _READ_ONLY:
                        wake.set()

            observer = Observer()
            observer.schedule(_Handler(), str(self.repo), recursive=True)
            observer.start()
            self._observer, self.mode = observer, "events"
        except Exception as exc:  # noqa: BLE001 - ImportError, or OSError from inotify limits: polling still works
            log.warning("filesystem events unavailable (%s); polling every %.1f s", exc, self.poll_seconds)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_seconds)
            if self._stop.is_set():
                return
            if self._wake.is_set():
                self._stop.wait(self.debounce)  # let a burst of events (a copy) settle
                self._wake.clear()
            try:
                self._sync()
            except Exception:  # the watcher thread must outlive any one bad sync
                log.exception("repository sync failed")

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._thread.ident is not None:  # stop() also runs when start-up failed before start()
            self._thread.join(timeout=10)
