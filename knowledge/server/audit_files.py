"""The audit log, persisted while serving: every entry the store's audit ring records is also appended
as one JSON line to `DATA/audit/audit-NNNNNN.jsonl`, rotated at `file_bytes_max`, keeping the newest
`files_max` files. Lines are flushed to the OS as they are written (a crash of the server process loses
none; a power loss may lose the last moments, as the log is not fsynced per read).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterable
from typing import Any

FILE_PATTERN = re.compile(r"^audit-(\d{6})\.jsonl$")
IDS_PER_LINE_MAX = 1000


def audit_file_name(number: int) -> str:
    return f"audit-{number:06d}.jsonl"


def audit_files(directory: str) -> list[str]:
    """The audit files in `directory`, oldest first."""
    if not os.path.isdir(directory):
        return []
    names = sorted(n for n in os.listdir(directory) if FILE_PATTERN.match(n))
    return [os.path.join(directory, n) for n in names]


class PersistentAudit:
    """Wraps the store's audit ring (same `record`, `query`, `len`) and writes each entry to files too."""

    def __init__(self, ring: Any, directory: str, *, file_bytes_max: int, files_max: int) -> None:
        self.ring = ring
        self.directory = directory
        self.file_bytes_max = file_bytes_max
        self.files_max = files_max
        self._lock = threading.Lock()
        os.makedirs(directory, exist_ok=True)
        existing = audit_files(directory)
        self._number = int(FILE_PATTERN.match(os.path.basename(existing[-1])).group(1)) if existing else 1
        self._file = open(os.path.join(directory, audit_file_name(self._number)), "a", encoding="utf-8")

    @property
    def ids_per_entry_max(self) -> int:
        return getattr(self.ring, "ids_per_entry_max", IDS_PER_LINE_MAX)

    def record(self, principal: str, api: str, node_ids: Iterable[int], lsn: int) -> None:
        ids = list(node_ids)
        self.ring.record(principal, api, ids, lsn)
        from knowledge.metrics import current_request_id
        line = json.dumps({"timestamp_ns": time.time_ns(), "principal": principal, "api": api,
                           "node_ids": ids[:IDS_PER_LINE_MAX], "node_count": len(ids), "lsn": lsn,
                           "request_id": current_request_id()},
                          separators=(",", ":"))
        with self._lock:
            if self._file.closed:
                return
            self._file.write(line + "\n")
            self._file.flush()
            if self._file.tell() >= self.file_bytes_max:
                self._rotate()

    def _rotate(self) -> None:
        self._file.close()
        self._number += 1
        self._file = open(os.path.join(self.directory, audit_file_name(self._number)), "a", encoding="utf-8")
        for path in audit_files(self.directory)[:-self.files_max]:
            os.unlink(path)

    def query(self, *args: Any, **kwargs: Any) -> Any:
        return self.ring.query(*args, **kwargs)

    def __len__(self) -> int:
        return len(self.ring)

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()


def read_audit(directory: str) -> list[dict[str, Any]]:
    """Every persisted entry, oldest first."""
    out = []
    for path in audit_files(directory):
        with open(path, encoding="utf-8") as f:
            out.extend(json.loads(line) for line in f if line.strip())
    return out
