"""Background index maintenance: slow index builds (HNSW) run in one worker thread, off the commit path.

A job has two halves. `run(stop)` does the slow work without any store lock, on data that cannot
change under it (rows below a mark, a private clone); it returns None when stopped. `install(result)`
runs under the store's state lock and swaps the result in only if it still fits the index (the
job's generation); otherwise the result is dropped. The newest job per index replaces a queued one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from contextlib import AbstractContextManager
from typing import Any, Protocol

log = logging.getLogger("knowledge.index.indexer")


class Job(Protocol):
    def run(self, stop: threading.Event) -> Any: ...

    def install(self, result: Any) -> bool: ...


class IndexBuilder:
    """One worker thread running index jobs, one queued job per key."""

    def __init__(self, state_lock: AbstractContextManager[Any],
                 retarget: Callable[[Hashable, Any], None] | None = None) -> None:
        self._state_lock = state_lock
        self._retarget = retarget  # under the lock, before install: point the job at the live index
        self._cv = threading.Condition()
        self._queued: dict[Hashable, Job] = {}
        self._running: Hashable | None = None
        self._stop = threading.Event()
        self.installed = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._loop, name="knowledge-indexer", daemon=True)
        self._thread.start()

    def submit(self, key: Hashable, job: Job) -> None:
        """Queue `job` for the index `key`, replacing a job queued for it and not yet started."""
        with self._cv:
            if self._stop.is_set():
                return
            self._queued[key] = job
            self._cv.notify_all()

    def is_pending(self, key: Hashable) -> bool:
        """Whether a job for `key` waits to start or runs."""
        with self._cv:
            return key in self._queued or self._running == key

    def pending(self) -> int:
        """Jobs queued or running."""
        with self._cv:
            return len(self._queued) + (self._running is not None)

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Block until no job is queued or running; False when `timeout_s` passed first."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._queued and self._running is None, timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop: queued jobs are dropped, a running job stops at its next check."""
        with self._cv:
            self._stop.set()
            self._queued.clear()
            self._cv.notify_all()
        self._thread.join(timeout_s)

    def _loop(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._queued or self._stop.is_set())
                if self._stop.is_set():
                    return
                key, job = next(iter(self._queued.items()))
                del self._queued[key]
                self._running = key
            try:
                result = job.run(self._stop)
                if result is not None and not self._stop.is_set():
                    with self._state_lock:
                        if self._retarget is not None:
                            self._retarget(key, job)
                        if job.install(result):
                            self.installed += 1
            except Exception:  # noqa: BLE001 - a failed build leaves the index as it was (still correct)
                self.failures += 1
                log.exception("index job for %s failed; the index keeps searching without it", key)
            finally:
                with self._cv:
                    self._running = None
                    self._cv.notify_all()
