"""CatchUp: the Replicator's snapshot and retention duties (a mixin of driver.Replicator).

Primary: `_offer` takes the backup for an InstallSnapshot just before it is sent (the tables then stand
exactly at the offered position) and `snapshot_chunks` serves it to the replica's fetch. Replica:
`_install_snapshot` fetches it into the store's incoming folder, closes the engine, installs the files
and opens a new engine (`reopen` points the Store at it); a failed fetch leaves the store untouched and
`_restart_node` rebuilds the state machine from disk, as a crash would. `_housekeep` measures the WAL
against `wal_retention_bytes_max` (node.limit_retention) and drops backups no replica is offered.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from knowledge.errors import KnowledgeError, SnapshotTransferFailed, StorePoisoned
from knowledge.replication.durable import WalLog, restore
from knowledge.replication.lsn import Position
from knowledge.replication.messages import InstallSnapshot
from knowledge.replication.node import ReplicationNode, Role
from knowledge.replication.snapshot import install
from knowledge.storage.engine import Engine

log = logging.getLogger("knowledge.replication")


class CatchUp:
    """Snapshot transfer and WAL retention for a Replicator (which holds every attribute used here)."""

    engine: Any
    node: ReplicationNode
    config: Any
    snapshots: Any
    counters: Any
    lock: Any
    hard: Any
    elector: Any
    fetch: Any
    reopen: Any
    wal_retention_bytes_max: int
    snapshot_rates: Any
    _pending: dict[int, Any]
    _payloads: dict[int, bytes]
    command: Any

    def snapshot_chunks(self, position: Position) -> Any:
        """The transport's Snapshot stream for the backup at `position` (SnapshotTransferFailed: not on offer)."""
        return self.snapshots.chunks(position)

    def _offer(self, message: InstallSnapshot) -> bool:
        """Primary: have the backup for `message` ready before it is sent; False (and a new offer next
        time) when it cannot be taken."""
        started = time.monotonic()
        taken = self.snapshots.taken
        try:
            path = self.snapshots.prepare(self.engine, message.position)
        except (SnapshotTransferFailed, OSError) as exc:
            log.warning("replication %s: no snapshot for %s: %s", self.config.node_id, message.to, exc)
            self.counters["snapshot_prepare_failures"] += 1
            self.command(lambda: self.node.forget_snapshot(message.to))
            return False
        if self.snapshots.taken != taken:
            self.counters["snapshots_taken"] += 1
            log.warning("replication %s: snapshot at %s for %s taken in %.2f s (%s)", self.config.node_id,
                        message.position, message.to, time.monotonic() - started, path)
        return True

    def _install_snapshot(self, message: InstallSnapshot) -> bool:
        """Replica: fetch, install and reopen the store at the snapshot; False when the fetch failed."""
        position, old = message.position, self.engine
        log.warning("replication %s: fetching the snapshot at %s from %s", self.config.node_id, position,
                    message.sender)
        started = time.monotonic()
        try:
            if self.fetch is None:
                raise SnapshotTransferFailed("this node has no transport to fetch snapshots with")
            received = self.fetch(message.sender, position, old.path)
        except (KnowledgeError, OSError) as exc:
            log.warning("replication %s: snapshot at %s failed (%s); the store is unchanged",
                        self.config.node_id, position, exc)
            self.counters["snapshot_failures"] += 1
            self._restart_node()
            return False
        fetched = time.monotonic() - started
        # the complete snapshot is on disk now: a restart finishes its install (snapshot.recover_incoming)
        old.replicator = None
        old.close()
        install(old.path)
        engine = Engine(old.path, old.config)
        if engine.wal.last_lsn > position.lsn:  # the primary's tail past the snapshot: it is resent
            engine.wal.truncate_after(position.lsn)
        if engine.memory_lsn != position.lsn:
            raise StorePoisoned(f"the snapshot at {position} opened at LSN {engine.memory_lsn}")
        engine.wal.on_sync = getattr(old.wal, "on_sync", None)  # the server's fsync metric follows the new WAL
        engine.replicator = self
        self.engine = engine
        self.log = WalLog(engine.wal)  # type: ignore[attr-defined]
        self.node.storage = self.log
        self._pending.clear()
        self._payloads.clear()
        if self.reopen is not None:
            self.reopen(engine)
        elapsed = time.monotonic() - started
        self.counters["snapshots_installed"] += 1
        self.snapshot_rates.append({"lsn": position.lsn, "bytes": received, "fetch_s": round(fetched, 3),
                                    "total_s": round(elapsed, 3),
                                    "mb_per_s": round(received / 1e6 / max(fetched, 1e-9), 2)})
        log.warning("replication %s: installed the snapshot at %s (%d bytes, %.2f s)", self.config.node_id,
                    position, received, elapsed)
        return True

    def _restart_node(self) -> None:
        """Rebuild the state machine from what is on disk (as a restarted process would) and resubscribe."""
        primary = self.node.primary_id
        restored = restore(self.engine.wal, self.hard.load(), self.engine.memory_lsn)
        node = ReplicationNode(self.config, self.log, restored)
        if primary is not None:
            node.follow(primary)
        with self.lock:
            self.node = node
        if self.elector is not None:
            self.elector.node = node

    def _housekeep(self) -> None:
        """Measure the WAL against its byte limit (node.limit_retention); drop backups no longer offered."""
        node = self.node
        if self.wal_retention_bytes_max:
            segments = self.engine.wal.segments
            floor, total = self.engine.wal.last_lsn + 1, 0
            for segment in reversed(segments):
                try:
                    total += os.path.getsize(segment.path)
                except OSError:
                    break
                if total > self.wal_retention_bytes_max and floor <= self.engine.wal.last_lsn:
                    break  # the live segment always stays
                floor = segment.first_lsn
            node.limit_retention(floor)  # a replica cut off: a retention_limit event (logged, counted)
        offered = ([p.snapshot for p in node.primary.progress.values() if p.snapshot is not None]
                   if node.role is Role.PRIMARY else [])
        self.snapshots.keep_only(offered)

