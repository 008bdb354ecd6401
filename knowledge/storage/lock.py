"""The directory lock: one process owns a store directory; others get StoreLocked with its PID."""

from __future__ import annotations

import fcntl
import os

from knowledge.errors import StoreLocked


class DirectoryLock:
    """An exclusive flock on `<dir>/LOCK` holding the owner's PID; released on close or process exit."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "LOCK")
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read_pid()
            os.close(self._fd)
            raise StoreLocked(directory, holder) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def _read_pid(self) -> int | None:
        try:
            text = os.pread(self._fd, 32, 0).decode().strip()
            return int(text) if text else None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
