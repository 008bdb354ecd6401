"""The audit log, persisted while serving: every entry the store's audit ring records is also appended
as one JSON line to `DATA/audit/audit-NNNNNN.jsonl`, rotated at `file_bytes_max`, keeping the newest
`files_max` files.

The reading call only queues its entry (and records it in the ring, which `audit_log()` queries at once); a
writer thread formats what is queued and appends it in one write, flushed to the OS, at least every
`flush_ms` (`ServerConfig.audit_flush_ms`, 10 ms by default), so a read pays no file write and no JSON
encoding. Durability: `flush()` returns once everything recorded before it is in the files; `close()` (the
server's stop, so a SIGTERM drain too) writes every queued entry before it returns. A crash of the server
process (SIGKILL, OOM) loses at most the entries of the last `flush_ms`; a power loss may lose the last
moments, as the files are not fsynced. `flush_ms=0` writes each entry in the reading call, as before (a
crash of the process then loses none).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

FILE_PATTERN = re.compile(r"^audit-(\d{6})\.jsonl$")
READER_DIR = re.compile(r"^reader-\d+$")  # a read process's files (knowledge.server.read_processes)
IDS_PER_LINE_MAX = 1000
FLUSH_MS = 10.0
NAMES_CACHED_MAX = 4096  # principal and API names kept JSON-encoded


_current_request_id: Any = None  # knowledge.metrics.current_request_id, imported on first use (not per entry)


def _request_id() -> str | None:
    """The request id of the call recording an entry (knowledge.metrics.current_request_id)."""
    global _current_request_id
    if _current_request_id is None:
        from knowledge.metrics import current_request_id
        _current_request_id = current_request_id
    return _current_request_id()


def audit_file_name(number: int) -> str:
    return f"audit-{number:06d}.jsonl"


def audit_files(directory: str) -> list[str]:
    """The audit files in `directory`, oldest first."""
    if not os.path.isdir(directory):
        return []
    names = sorted(n for n in os.listdir(directory) if FILE_PATTERN.match(n))
    return [os.path.join(directory, n) for n in names]


_Pending = tuple[int, str, str, list[int], int, "str | None"]  # (timestamp_ns, principal, api, ids, lsn, request id)


class PersistentAudit:
    """Wraps the store's audit ring (same `record`, `query`, `len`) and writes each entry to files too:
    queued by `record`, written by a writer thread within `flush_ms` (0: in `record` itself)."""

    def __init__(self, ring: Any, directory: str, *, file_bytes_max: int, files_max: int,
                 flush_ms: float = FLUSH_MS) -> None:
        self.ring = ring
        self.directory = directory
        self.file_bytes_max = file_bytes_max
        self.files_max = files_max
        self.flush_s = max(0.0, flush_ms) / 1000
        self._lock = threading.Lock()  # the file, its rotation and `_written`
        self._queue_lock = threading.Condition(threading.Lock())  # `_queue`, `_queued`, `_closed`
        self._queue: list[_Pending] = []
        self._queued = 0  # entries queued since the start (the last one's number)
        self._written = 0  # entries written to the files since the start
        self._written_cv = threading.Condition(self._lock)
        self._closed = False
        self._flush_wanted = False  # flush() asks the writer not to wait out `flush_s`
        self._json_names: dict[str, str] = {}  # principal or API name -> its JSON text
        self.read_processes = False  # `query` merges the entries of the server's read processes too
        self.started_ns = time.time_ns()
        os.makedirs(directory, exist_ok=True)
        existing = audit_files(directory)
        self._number = int(FILE_PATTERN.match(os.path.basename(existing[-1])).group(1)) if existing else 1
        self._file = open(os.path.join(directory, audit_file_name(self._number)), "a", encoding="utf-8")
        self._writer: threading.Thread | None = None
        if self.flush_s > 0:
            self._writer = threading.Thread(target=self._write_loop, name="knowledge-audit-writer", daemon=True)
            self._writer.start()

    @property
    def ids_per_entry_max(self) -> int:
        return getattr(self.ring, "ids_per_entry_max", IDS_PER_LINE_MAX)

    def record(self, principal: str, api: str, node_ids: Iterable[int], lsn: int) -> None:
        ids = node_ids if isinstance(node_ids, list) else list(node_ids)
        self.ring.record(principal, api, ids, lsn)
        entry = (time.time_ns(), principal, api, ids, lsn, _request_id())
        if self._writer is None:
            with self._lock:
                self._write([entry])
            return
        with self._queue_lock:
            if self._closed:
                return
            self._queue.append(entry)
            self._queued += 1
            if len(self._queue) == 1:  # the writer sleeps on an empty queue
                self._queue_lock.notify()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every entry recorded before this call is in the files (flushed to the OS); False when
        `timeout_s` passed first."""
        with self._queue_lock:
            target = self._queued
            self._flush_wanted = True
            self._queue_lock.notify_all()
        with self._written_cv:
            return self._written_cv.wait_for(lambda: self._written >= target or self._file.closed, timeout_s)

    def _write_loop(self) -> None:
        """Sleep until an entry is queued, gather for `flush_s` (cut short by `flush()` and `close()`), write
        the batch; until closed."""
        queue_lock = self._queue_lock
        while True:
            with queue_lock:
                while not self._queue and not self._closed:
                    queue_lock.wait()
                queue_lock.wait_for(lambda: self._closed or self._flush_wanted, self.flush_s)
                batch, self._queue = self._queue, []
                self._flush_wanted = False
                closed = self._closed
            if batch:
                with self._lock:
                    self._write(batch)
            if closed:
                return

    def _json_name(self, name: str) -> str:
        text = self._json_names.get(name)
        if text is None:
            text = json.dumps(name)
            if len(self._json_names) < NAMES_CACHED_MAX:
                self._json_names[name] = text
        return text

    def _write(self, batch: list[_Pending]) -> None:
        """Append `batch` as JSON lines (under `_lock`), flushed to the OS, rotating as the file fills."""
        if self._file.closed:
            return
        name = self._json_name
        lines = []
        for timestamp_ns, principal, api, ids, lsn, request_id in batch:
            shown = ids if len(ids) <= IDS_PER_LINE_MAX else ids[:IDS_PER_LINE_MAX]
            rid = "null" if request_id is None else json.dumps(request_id)
            lines.append(f'{{"timestamp_ns":{timestamp_ns},"principal":{name(principal)},"api":{name(api)},'
                         f'"node_ids":[{",".join(map(str, shown))}],"node_count":{len(ids)},"lsn":{lsn},'
                         f'"request_id":{rid}}}\n')
        for line in lines:  # rotation is checked per line, as when each was written alone
            self._file.write(line)
            if self._file.tell() >= self.file_bytes_max:
                self._file.flush()
                self._rotate()
        self._file.flush()
        self._written += len(batch)
        self._written_cv.notify_all()

    def _rotate(self) -> None:
        self._file.close()
        self._number += 1
        self._file = open(os.path.join(self.directory, audit_file_name(self._number)), "a", encoding="utf-8")
        for path in audit_files(self.directory)[:-self.files_max]:
            os.unlink(path)

    def query(self, principal: str | None = None, api: str | None = None, node_id: int | None = None,
              limit: int = 1000) -> list[Any]:
        """The ring's entries, newest first (AuditLog.query); with `read_processes`, merged with the entries
        the read processes wrote to `directory/reader-K/` since this server started (as the ring holds
        this process's since then), at most `limit` in all."""
        own = self.ring.query(principal, api, node_id, limit)
        if not self.read_processes:
            return own
        from knowledge.access.audit import AuditEntry
        theirs = []
        for entry in _reader_entries(self.directory, self.started_ns, limit,
                                     lambda e: (principal is None or e["principal"] == principal)
                                     and (api is None or e["api"] == api)
                                     and (node_id is None or node_id in e["node_ids"])):
            theirs.append(AuditEntry(entry["timestamp_ns"], entry["principal"], entry["api"],
                                     tuple(entry["node_ids"]), entry["node_count"], entry["lsn"]))
        merged = sorted([*own, *theirs], key=lambda entry: entry.timestamp_ns, reverse=True)
        return merged[:limit]

    def __len__(self) -> int:
        return len(self.ring)

    def close(self) -> None:
        """Write every queued entry, then close the files (later records reach the ring only)."""
        with self._queue_lock:
            self._closed = True
            self._queue_lock.notify_all()
        if self._writer is not None and self._writer is not threading.current_thread():
            self._writer.join()
        with self._lock:
            if self._queue:  # recorded after the writer's last batch (or with no writer)
                batch, self._queue = self._queue, []
                self._write(batch)
            if not self._file.closed:
                self._file.close()
            self._written_cv.notify_all()


def _reader_entries(directory: str, since_ns: int, limit: int,
                    wanted: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Up to `limit` wanted entries of each read process's files in `directory` (`reader-K/`), recorded at
    or after `since_ns`, newest first per process (files read newest first, stopping at `since_ns`)."""
    out: list[dict[str, Any]] = []
    if not os.path.isdir(directory):
        return out
    for name in sorted(n for n in os.listdir(directory) if READER_DIR.match(n)):
        found = 0
        for path in reversed(audit_files(os.path.join(directory, name))):
            try:
                with open(path, encoding="utf-8") as f:
                    lines = f.readlines()
            except OSError:  # rotated away meanwhile
                continue
            older = False
            for line in reversed(lines):
                try:
                    entry = json.loads(line)
                except ValueError:  # a line being written
                    continue
                if entry["timestamp_ns"] < since_ns:
                    older = True
                    break
                if wanted(entry):
                    out.append(entry)
                    found += 1
                    if found >= limit:
                        break
            if older or found >= limit:
                break
    return out


def read_audit(directory: str, *, read_processes: bool = True) -> list[dict[str, Any]]:
    """Every persisted entry, oldest first; with `read_processes`, those of a server's read processes too
    (`directory/reader-K/`, knowledge.server.read_processes), merged by time."""
    out = []
    for path in audit_files(directory):
        with open(path, encoding="utf-8") as f:
            out.extend(json.loads(line) for line in f if line.strip())
    if read_processes and os.path.isdir(directory):
        readers = sorted(name for name in os.listdir(directory) if READER_DIR.match(name))
        for name in readers:
            out.extend(read_audit(os.path.join(directory, name), read_processes=False))
        if readers:
            out.sort(key=lambda entry: entry["timestamp_ns"])  # stable: one process's entries keep their order
    return out
