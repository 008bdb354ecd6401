"""The audit log: which principal read which node ids through which API, at which LSN.

Bounded retention: a ring of at most `entries_max` entries (oldest dropped first), each holding
at most `ids_per_entry_max` ids plus the total count. Queried by admins only (Session.audit_log).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One read: when (ns since epoch), who, which API, which node ids (capped), how many, at which LSN."""

    timestamp_ns: int
    principal: str
    api: str
    node_ids: tuple[int, ...]
    node_count: int
    lsn: int


class AuditLog:
    """A bounded, thread-safe ring of AuditEntry."""

    def __init__(self, entries_max: int = 100_000, ids_per_entry_max: int = 1000) -> None:
        self.ids_per_entry_max = ids_per_entry_max
        self._entries: deque[AuditEntry] = deque(maxlen=entries_max)
        self._lock = threading.Lock()

    def record(self, principal: str, api: str, node_ids: Iterable[int], lsn: int) -> None:
        ids = list(node_ids)
        entry = AuditEntry(time.time_ns(), principal, api, tuple(ids[:self.ids_per_entry_max]), len(ids), lsn)
        with self._lock:
            self._entries.append(entry)

    def query(self, principal: str | None = None, api: str | None = None, node_id: int | None = None,
              limit: int = 1000) -> list[AuditEntry]:
        """Newest first, filtered by principal, API and/or a node id."""
        with self._lock:
            entries = list(self._entries)
        out = []
        for entry in reversed(entries):
            if principal is not None and entry.principal != principal:
                continue
            if api is not None and entry.api != api:
                continue
            if node_id is not None and node_id not in entry.node_ids:
                continue
            out.append(entry)
            if len(out) >= limit:
                break
        return out

    def __len__(self) -> int:
        return len(self._entries)
