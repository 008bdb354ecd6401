"""Engine: the state of one open store directory and the write path through it.

It owns the WAL (truth), the DuckDB tables, the schema, the node directory, the principal catalog,
the graph adjacency, the vector and keyword indexes, the row cache and the background index builder,
and runs the commit pipeline over them: WAL append under the stage lock -> group fsync -> apply to
memory in LSN order -> hand the record to the DuckDB applier, a background thread that batches
records into one DuckDB transaction. Every read that touches DuckDB first waits until DuckDB has
applied everything committed before the read started (read-your-writes). `knowledge.store.Store` owns
one Engine; the storage modules (loading, memory_apply, backup) take the Engine, never the Store.

Over ~450 lines on purpose: the commit pipeline, the DuckDB applier (with its full-disk stall),
the log-to-tables join at open and the replication hooks share the engine's locks and queues;
splitting them would spread one locking protocol over several files.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from knowledge.access.principal import Principal
from knowledge.access.view_clock import ViewClock
from knowledge.config import StoreConfig
from knowledge.errors import (
    CorruptionError,
    KnowledgeError,
    StorageFull,
    StoreClosed,
    StorePoisoned,
    invariant,
)
from knowledge.index.columns import TypeColumns
from knowledge.index.graph import EdgeIndex
from knowledge.index.indexer import IndexBuilder
from knowledge.index.keyword import KeywordIndex
from knowledge.index.snapshot_file import use_keyring, write_snapshot
from knowledge.index.vector_jobs import compaction, hnsw_job
from knowledge.index.vectors import VectorIndex
from knowledge.storage.catalog import Catalog
from knowledge.storage.crypto import check_store_keys
from knowledge.storage.directory import NodeDirectory, StageUndo
from knowledge.storage.loading import load_memory, replay
from knowledge.storage.memory_apply import apply_fresh_rows, apply_memory, fresh_rows_op, merged_rows_op
from knowledge.storage.ops import Op, OpKind, encode_ops
from knowledge.storage.resolve import Resolver, check_payload_size
from knowledge.storage.retention import compact, retire_live_segment
from knowledge.storage.row_cache import RowCache
from knowledge.storage.schema import Schema
from knowledge.storage.sweeper import Sweeper
from knowledge.storage.tables import Tables
from knowledge.storage.ttl import ExpiryTracker
from knowledge.storage.versions import ReadView, TablesAt, TablesPassed, own, own_for
from knowledge.storage.view_record import seed_view_clock
from knowledge.storage.wal import WriteAheadLog

log = logging.getLogger("knowledge.store")
APPLY_BATCH_RECORDS_MAX = 4096
APPLY_BATCH_RECORDS_MIN = 1024  # DuckDB costs ~10 ms CPU per transaction, whatever its size
BUILD_ROUNDS_MAX = 4  # build_indexes: schedule-and-wait rounds before a last wait
APPLY_RETRY_S_MIN = 0.05  # the applier's first retry after a full disk, doubling up to the max
APPLY_RETRY_S_MAX = 2.0
MARKER = "STORE"  # the file that makes a directory a store
SPACE_CHECK_S = 0.01  # check_space asks the file system again after this long
GROUP_BYTES_MAX = 8 << 20  # a group commit stops taking transactions once its records hold this many bytes
_QUEUED, _LEAD, _STAGED, _DONE = range(4)  # a group-commit ticket's state (Engine.commit)
Prepare = Callable[[], "tuple[list[Op], Resolver | None] | None"]


class _Ticket:
    """One transaction of a group commit: how to resolve it, and its outcome (its LSN or its error)."""

    __slots__ = ("edge_types", "error", "lsn", "ops", "prepare", "state", "_wake")

    def __init__(self, prepare: Prepare) -> None:
        self.prepare = prepare
        self.lsn = 0  # its record's LSN once written (or, with nothing to write, the LSN it saw)
        self.ops: list[Op] | None = None
        self.edge_types: set[str] = set()
        self.error: BaseException | None = None
        self.state = _QUEUED
        self._wake = threading.Lock()  # held until the ticket is woken (cheaper than an Event)
        self._wake.acquire()

    def wait(self) -> None:
        self._wake.acquire()

    def wake(self, state: int) -> None:
        self.state = state
        self._wake.release()


def is_store(path: str) -> bool:
    """Whether the directory `path` holds a store (its marker file)."""
    return os.path.isfile(os.path.join(path, MARKER))


class Engine:
    """The open state of a store directory (whose lock the caller holds) and its commit pipeline."""

    def __init__(self, path: str, config: StoreConfig, *, allow_data_loss: bool = False) -> None:
        self.path = path
        self.config = config
        self.allow_data_loss = allow_data_loss
        try:
            self._open()
        except BaseException:
            if "indexer" in self.__dict__:
                self.indexer.close()
            for part in ("wal", "tables"):  # a refused open holds no file
                if part in self.__dict__:
                    try:
                        self.__dict__[part].close()
                    except Exception:  # noqa: BLE001 - the original error matters more
                        log.warning("closing %s after a failed open failed", part, exc_info=True)
            raise

    def _open(self) -> None:
        self.closed = False
        self.failure: BaseException | None = None
        self.stage_lock = threading.Lock()  # one WAL append (and its staging) at a time
        self._group_lock = threading.Lock()  # group commit: the arrivals queue and who leads it
        self._arrivals: list[_Ticket] = []
        self._leading = False  # a committer is taking the arrivals into a group commit
        self._pending_groups: collections.deque[list[_Ticket]] = collections.deque()  # written, not yet applied
        self.state_lock = threading.RLock()  # memory state and memory_lsn change together under it
        self._memory_turn = threading.Condition(threading.Lock())
        self._applier_cv = threading.Condition(threading.Lock())
        self._queue: list[tuple[int, int, list[Op]]] = []
        self._queue_since = time.monotonic()
        self._readers_waiting = 0
        self._inflight_edges: dict[str, int] = {}
        self.memory_lsn = 0
        self.memory_schema = Schema()  # the schema as of memory_lsn (`schema` runs ahead: it is staged)
        self._view: ReadView | None = None  # the read view of memory_lsn, once a reader asked (versions.py)
        self._table_waits: dict[int, list[weakref.ref[TablesAt]]] = {}  # snapshots to open when the tables get there
        self._table_snapshots: weakref.WeakSet[TablesAt] = weakref.WeakSet()  # opened, closed at close()
        self.applier_stalled: StorageFull | None = None  # the disk was full at the applier's last try
        self._space = (-SPACE_CHECK_S, 0, 0)  # check_space's last look: (monotonic time, free bytes, DuckDB WAL bytes)
        self._space_spent = 0  # bytes logged since then
        self._retry_s = 0.0
        self._unapplied: collections.deque[tuple[int, int]] = collections.deque()  # (lsn, payload bytes)
        self._unapplied_bytes = 0  # logged but not yet in DuckDB: room the applier will need
        self.replay_backlog: list[tuple[int, int, list[Op]]] = []  # set by replay() on a full disk
        self.replicator: Any = None  # knowledge.replication's driver, when the store is replicated
        self.on_memory: Callable[[int], None] | None = None  # told each memory_lsn publication, before the
        # committers are answered (knowledge serve's read processes: server/read_processes.py)
        self.retain_floor: Callable[[int], int] | None = None  # the first LSN followers of the WAL files still
        # need, given the first a checkpoint would keep (read processes tail them)
        self.keyring = self.config.keyring()  # encryption at rest (None: files in plaintext)
        check_store_keys(self.path, self.keyring)  # a missing or wrong key is refused before any file changes
        use_keyring(os.path.join(self.path, "snapshots"), self.keyring)
        self.tables = Tables(os.path.join(self.path, "state.duckdb"))
        self.wal = WriteAheadLog(os.path.join(self.path, "wal"), fsync=self.config.fsync,
                                 segment_bytes_max=self.config.segment_bytes_max,
                                 preallocate_bytes=self.config.wal_preallocate_bytes,
                                 allow_data_loss=self.allow_data_loss, keyring=self.keyring)
        self._join_log_to_tables()
        self.schema = self.tables.schema
        self.directory = NodeDirectory()
        self.edges: dict[str, EdgeIndex] = {}
        self.catalog = Catalog()
        self.vectors: dict[tuple[str, str], VectorIndex] = {}
        self.keywords: dict[tuple[str, str], KeywordIndex] = {}
        self.columns: dict[str, TypeColumns] = {}  # where-filter column indexes per node type
        self.indexer = IndexBuilder(self.state_lock, self._retarget)
        self.row_cache = RowCache(self.config.row_cache_rows_max)
        self.view_clock = ViewClock()
        self._view_seeded = False
        self.ttl = ExpiryTracker(self.config.clock, self.state_lock,  # TTL policies and deadlines (storage/ttl.py)
                                 lambda: (self.directory, self.columns))
        self.sweeper: Sweeper | None = None
        self.last_compaction: dict[str, Any] = {}
        load_memory(self)
        replay(self)
        self.memory_schema = self.schema
        self._taken_lsn = self.tables.applied_lsn  # the last LSN the table applier took into a batch
        saved = ViewClock.load(self.path, self.memory_lsn)  # what a clean close knew beyond the tables
        if saved is not None:
            self.view_clock.merge(saved)
        self.schedule_index_builds()
        self.epoch = max(self.wal.last_epoch, self.tables.applied_epoch, 1)
        if self.replay_backlog:  # the disk was full while replaying: the applier takes over, waiting for space
            self._queue = self.replay_backlog
            self.applier_stalled = StorageFull(f"the tables of {self.path} are behind the WAL (the disk was full "
                                               f"at open)", path=self.path)
            self.replay_backlog = []
        self._applier = threading.Thread(target=self._apply_loop, name="knowledge-applier", daemon=True)
        self._applier.start()
        if self.config.ttl_sweep_rows_per_s > 0:
            self.sweeper = Sweeper(self)  # deletes expired rows through the WAL (storage/sweeper.py)

    def _join_log_to_tables(self) -> None:
        """Refuse (unless data loss is allowed) a log that ends before the tables or starts after them:
        records the tables hold or need would be missing from the log."""
        applied, wal = self.tables.applied_lsn, self.wal
        segments = [os.path.basename(seg.path) for seg in wal.segments]
        if segments and wal.last_lsn < applied:
            lost = (wal.last_lsn + 1, applied)
            message = (f"the WAL ends at LSN {wal.last_lsn} but the tables hold records up to LSN {applied}: "
                       f"the log lost records LSN {lost[0]}..{lost[1]}")
            if not self.allow_data_loss:
                raise CorruptionError(f"{message}; restore from a backup or open with allow_data_loss=True to "
                                      f"continue the log after LSN {applied}", segment=segments[-1], lsn_range=lost)
            log.warning("%s; the log is set aside and continues after LSN %d (allow_data_loss=True)",
                        message, applied)
            wal.set_aside_all()
            wal.recovery.lsn_ranges_lost.append(list(lost))
        elif segments and wal.first_lsn > applied + 1:
            raise CorruptionError(f"the WAL starts at LSN {wal.first_lsn} but the tables stop at LSN {applied}: "
                                  f"records LSN {applied + 1}..{wal.first_lsn - 1} are missing; restore from a "
                                  f"backup", segment=segments[0], lsn_range=(applied + 1, wal.first_lsn - 1))

    def check_space(self, incoming_bytes: int = 0) -> None:
        """Raise StorageFull unless the store's file system has room for the configured reserve, the
        incoming record (in the WAL, then DuckDB's WAL and table file), the records the applier has yet
        to write, and a DuckDB checkpoint of its WAL."""
        reserve = self.config.disk_free_bytes_min
        if reserve <= 0:
            return
        now = time.monotonic()
        measured, free, duckdb_wal_bytes = self._space
        free -= self._space_spent  # what the records logged since the last look took
        needed = reserve + 3 * incoming_bytes + 2 * self._unapplied_bytes + duckdb_wal_bytes
        if now - measured >= SPACE_CHECK_S or free < needed:  # a commit that passes trusts a look this recent
            stat = os.statvfs(self.path)
            free = stat.f_bavail * stat.f_frsize
            try:
                duckdb_wal_bytes = os.stat(self.tables.path + ".wal").st_size
            except OSError:
                duckdb_wal_bytes = 0
            self._space = (now, free, duckdb_wal_bytes)
            self._space_spent = 0
            needed = reserve + 3 * incoming_bytes + 2 * self._unapplied_bytes + duckdb_wal_bytes
        if free < needed:
            raise StorageFull(f"only {free} bytes free on the device holding {self.path} (the store keeps "
                              f"{reserve} in reserve for its tables); the commit was not made: free space, then "
                              f"retry", path=self.path)
        self._space_spent += incoming_bytes

    def snapshot_path(self, type_name: str, prop: str, kind: str = "vectors") -> str:
        """Where the snapshot of the (type, property) index of `kind` ("vectors", "keywords") lives."""
        return os.path.join(self.path, "snapshots", f"{kind}-{type_name}-{prop}.snap")

    def inflight_edge_types(self) -> set[str]:
        """Edge types with a logged record not yet applied to memory (call under the stage lock)."""
        return {name for name, count in self._inflight_edges.items() if count}

    # -- commit pipeline ----------------------------------------------------------------------
    def commit(self, prepare: Prepare) -> int:
        """Commit one transaction through the group commit; return its LSN. `prepare()`, called under the
        stage lock, resolves it against the staged state and returns (ops, resolver), or None when it has
        nothing to write (then the current LSN is returned); what it raises fails this transaction alone.

        Leader and followers: the committer that finds no one leading takes every transaction queued
        (up to `group_commit_max`), resolves each in arrival order (each sees the ones before it staged),
        logs all their records in one WAL write, hands the lead to the next arrival, then makes them
        durable with one fsync, applies them to memory in LSN order under one state-lock hold, publishes
        the last LSN once and wakes the followers. Each transaction keeps its own record and LSN, so
        replay, replication and the tables see the same records as one commit at a time would; a
        transaction that fails validation fails alone; a failed WAL write (a full disk) takes the whole
        group's staging back and fails each of them with the error, leaving the log as before. Under
        replication each committer waits for its own record's commit policy (`finish`)."""
        ticket = _Ticket(prepare)
        with self._group_lock:
            self._arrivals.append(ticket)
            lead = not self._leading
            self._leading = True
        if not lead:
            ticket.wait()
            if ticket.state != _LEAD:
                return self._outcome(ticket)
        with self._group_lock:  # the leader is the oldest arrival: it is in its own group
            group = self._arrivals[:self.config.group_commit_max]
            del self._arrivals[:len(group)]
        written: list[_Ticket] = []
        replicated = False
        try:
            with self.stage_lock:
                replicated = self.replicator is not None
                written = self._stage_group(group)
                if written and not replicated:
                    self._pending_groups.append(written)  # in LSN order: appended under the stage lock
        except BaseException as exc:  # not a transaction's own error (those are kept per ticket)
            if any(other.ops is not None and other.lsn for other in group):
                self.fail(exc)  # records logged and staged, but their commit cannot go on
            for other in group:
                if other.error is None:
                    other.error = exc
            written = []
            raise
        finally:
            self._hand_lead()
            self._wake_known(group, ticket)
        if written and replicated:
            self._finish_replicated(written, ticket)
        elif written:
            self._finish_group(written, ticket)
        return self._outcome(ticket)

    def _hand_lead(self) -> None:
        """After a group's WAL write: the oldest arrival leads the next group (or no one leads)."""
        with self._group_lock:
            if not self._arrivals:
                self._leading = False
                return
            following = self._arrivals[0]
        following.wake(_LEAD)

    @staticmethod
    def _wake_known(group: list[_Ticket], own: _Ticket) -> None:
        """After a group's WAL write, wake the committers whose outcome is known (an error, or nothing to
        write); the others are woken once their record is applied (`_drain`) or, under replication, made
        durable here (`_finish_replicated`). `own` (the leader's) runs on."""
        for other in group:
            if other.ops is None or other.error is not None:
                if other is own:
                    other.state = _DONE
                else:
                    other.wake(_DONE)

    def _finish_replicated(self, written: list[_Ticket], own: _Ticket) -> None:
        """Under replication, after the group's WAL write: its Appends leave (one driver iteration on this
        thread, before the fsync, as `finish` does for one record), one fsync, then every committer waits
        for its own record's commit policy (`_outcome`); the driver applies the records."""
        failed: BaseException | None = None
        try:
            replicator = self.replicator
            if replicator is not None:
                replicator.ship(written[-1].lsn)
            self.wal.sync_to(written[-1].lsn)
        except BaseException as exc:  # noqa: BLE001 - every committer of the group gets it
            self.fail(exc)
            failed = exc
        for ticket in written:
            if failed is not None:
                ticket.error = failed
            state = _DONE if failed is not None else _STAGED
            if ticket is own:
                ticket.state = state
            else:
                ticket.wake(state)

    def _outcome(self, ticket: _Ticket) -> int:
        if ticket.error is not None:
            raise ticket.error
        if ticket.state == _STAGED:  # replicated and durable here: wait for the record's commit policy
            assert ticket.ops is not None
            replicator = self.replicator
            if replicator is None:  # replication was stopped meanwhile: apply it here, as finish() would
                return self.finish(ticket.lsn, ticket.ops, ticket.edge_types)
            return replicator.wait_committed(ticket.lsn)
        return ticket.lsn

    def _stage_group(self, group: list[_Ticket]) -> list[_Ticket]:
        """Under the stage lock: resolve and stage each ticket in turn, then log the records of those that
        resolved in one WAL write; return those tickets, in LSN order. A ticket whose `prepare` or size
        check raises keeps its error; a failed write unstages every ticket and gives each the error."""
        try:
            self.check_open()
            replicator = self.replicator  # replication: only its primary writes, in its epoch
            epoch = self.epoch if replicator is None else replicator.writable_epoch()
        except Exception as exc:  # noqa: BLE001 - every ticket reports it
            for ticket in group:
                ticket.error = exc
            return []
        undo = StageUndo(self.directory.next_id)
        schema_before = self.schema
        written: list[_Ticket] = []
        payloads: list[bytes] = []
        total = 0
        for index, ticket in enumerate(group):
            if total >= GROUP_BYTES_MAX:  # the rest go first in the next group
                with self._group_lock:
                    self._arrivals[:0] = group[index:]
                del group[index:]
                break
            try:
                prepared = ticket.prepare()
                if prepared is None:
                    ticket.lsn = self.memory_lsn
                    continue
                ops, resolver = prepared
                payload = encode_ops(ops)
                check_payload_size(payload, self.config.transaction_bytes_max)
            except Exception as exc:  # noqa: BLE001 - this transaction's own failure
                ticket.error = exc
                continue
            ticket.ops = ops
            ticket.edge_types = self._stage(ops, resolver, undo)
            written.append(ticket)
            payloads.append(payload)
            total += len(payload)
        if not written:
            return []
        timestamp_ns = time.time_ns()
        try:
            self.check_space(total)
            first = self.wal.append_many(payloads, epoch, timestamp_ns)
        except BaseException as exc:
            self._unstage(written, undo, schema_before)
            for ticket in written:
                ticket.error, ticket.ops = exc, None
            if not isinstance(exc, Exception):
                raise
            return []
        with self._applier_cv:
            for index, payload in enumerate(payloads):
                self._unapplied.append((first + index, len(payload)))
            self._unapplied_bytes += total
        for index, ticket in enumerate(written):
            ticket.lsn = first + index
            if replicator is not None:
                assert ticket.ops is not None
                replicator.proposed(ticket.lsn, epoch, timestamp_ns, payloads[index], ticket.ops, ticket.edge_types)
        return written

    def _stage(self, ops: list[Op], resolver: Resolver | None, undo: StageUndo | None = None) -> set[str]:
        """Under the stage lock: stage what a logged (or about to be logged) record changes, for the
        validation of the next; return its edge types (in flight until applied)."""
        if resolver is not None:
            with self.state_lock:  # a fork of the directory (versions.py) copies next_id: not meanwhile
                directory = self.directory
                for type_name, keys, ids in resolver.staged.upserts:
                    directory.stage_upsert(type_name, keys, ids, undo)
                directory.stage_delete(resolver.staged.deletes, undo)
                directory.next_id = max(directory.next_id, resolver.staged.next_id)
        edge_types = {op.name for op in ops if op.kind in (OpKind.UPSERT_EDGES, OpKind.DELETE_EDGES)}
        for name in edge_types:
            self._inflight_edges[name] = self._inflight_edges.get(name, 0) + 1
        if any(op.kind == OpKind.SCHEMA for op in ops):
            self.schema = Schema.from_dict(ops[-1].document)
        return edge_types

    def _unstage(self, tickets: list[_Ticket], undo: StageUndo, schema: Schema) -> None:
        """Take back the staging of `tickets` (their group's WAL write failed)."""
        with self.state_lock:
            self.directory.unstage(undo)
        for ticket in tickets:
            for name in ticket.edge_types:
                self._inflight_edges[name] -= 1
            ticket.edge_types = set()
        self.schema = schema

    def _finish_group(self, written: list[_Ticket], own: _Ticket) -> None:
        """After the group's WAL write (the group is pending): make its records durable (one fsync, shared
        with the groups written meanwhile), then apply every pending group whose turn has come; a group
        another committer applies (or that waits for an earlier record) wakes `own` when it is in. On a
        failure the store is poisoned and every pending group's committers get the error."""
        try:
            self.wal.sync_to(written[-1].lsn)
        except BaseException as exc:  # noqa: BLE001 - fail() fails (and wakes) every pending group
            self.fail(exc)
        with self._memory_turn:
            applied = self._drain(written, own)
        if not applied and own.ops is not None:  # its record is in this group: wait until it is applied
            own.wait()

    def _drain(self, mine: list[_Ticket] | None = None, own: _Ticket | None = None) -> bool:
        """Under the memory-turn lock: apply the pending groups whose records are durable and next in LSN
        order, oldest first, each under one state-lock hold with one `memory_lsn` publication, and wake
        their committers (all but `own`); True when the group `mine` was among them. Called by group
        leaders after their fsync and by every single-record apply, so no group waits for a turn that came."""
        pending = self._pending_groups
        applied_mine = False
        while pending and self.failure is None:
            group = pending[0]
            if group[0].lsn != self.memory_lsn + 1 or group[-1].lsn > self.wal.durable_lsn:
                break
            pending.popleft()
            failed: BaseException | None = None
            try:
                with self.state_lock:
                    self._apply_group(group)
                    for ticket in group:
                        for name in ticket.edge_types:
                            self._inflight_edges[name] -= 1
                    self.memory_lsn = group[-1].lsn  # inside the state lock: a snapshot sees ops and LSN together
                    self._enqueue_many(group)
                if self.on_memory is not None:
                    self.on_memory(group[-1].lsn)
            except BaseException as exc:  # noqa: BLE001 - the group's committers get it; the store is poisoned
                failed = exc
                for ticket in group:
                    ticket.error = exc
            applied_mine = applied_mine or group is mine
            for ticket in group:
                if ticket is own:
                    ticket.state = _DONE
                else:
                    ticket.wake(_DONE)
            if failed is not None:
                self.fail(failed, holding_memory_turn=True)
                break
        self._memory_turn.notify_all()
        return applied_mine

    def _fail_pending(self) -> None:
        """Under the memory-turn lock, once poisoned: every group waiting for its memory turn fails."""
        while self._pending_groups:
            group = self._pending_groups.popleft()
            for ticket in group:
                if ticket.error is None:
                    error = StorePoisoned("an earlier commit failed; reopen the store")
                    error.__cause__ = self.failure
                    ticket.error = error
                ticket.wake(_DONE)

    def append(self, ops: list[Op], resolver: Resolver | None) -> tuple[int, list[Op], set[str]]:
        """Under the stage lock: write the record (not yet durable) and stage what it changes."""
        payload = encode_ops(ops)
        check_payload_size(payload, self.config.transaction_bytes_max)
        self.check_space(len(payload))
        replicator = self.replicator  # replication: only its primary writes, in its epoch
        epoch = self.epoch if replicator is None else replicator.writable_epoch()
        timestamp_ns = time.time_ns()
        lsn = self.wal.append(payload, epoch, timestamp_ns)
        with self._applier_cv:
            self._unapplied.append((lsn, len(payload)))
            self._unapplied_bytes += len(payload)
        edge_types = self._stage(ops, resolver)
        if replicator is not None:
            replicator.proposed(lsn, epoch, timestamp_ns, payload, ops, edge_types)
        return lsn, ops, edge_types

    def finish(self, lsn: int, ops: list[Op], edge_types: set[str]) -> int:
        """Outside the stage lock: wait for durability (group commit: concurrent committers share an
        fsync), then apply to memory in LSN order. Readers never wait for an fsync and never see a
        record before it is durable. Under replication the record is applied (by apply_replicated) once
        its commit policy holds, and this waits for that outcome."""
        if self.replicator is not None:
            self.replicator.ship(lsn)  # its Appends leave before this fsync (replication/driver.py)
        try:
            self.wal.sync_to(lsn)
        except BaseException as exc:
            self.fail(exc)
            raise
        if self.replicator is not None:
            return self.replicator.wait_committed(lsn)
        with self._memory_turn:
            while self.memory_lsn != lsn - 1:
                if self.failure is not None:
                    raise StorePoisoned("an earlier commit failed; reopen the store") from self.failure
                self._memory_turn.wait(0.5)
            try:
                with self.state_lock:
                    self._apply_memory(ops, lsn)
                    for name in edge_types:
                        self._inflight_edges[name] -= 1
                    self.memory_lsn = lsn  # inside the state lock: a snapshot sees ops and LSN together
                    self._enqueue(lsn, ops)
                if self.on_memory is not None:
                    self.on_memory(lsn)
            except BaseException as exc:
                self.fail(exc, holding_memory_turn=True)  # fail() taking the lock again would deadlock
                raise
            self._drain()  # group commits waiting behind this record (notifies the other waiters)
        return lsn

    def apply_replicated(self, lsn: int, epoch: int, ops: list[Op], edge_types: set[str] | None = None) -> None:
        """Apply committed record `lsn` (the next one) to memory and hand it to the DuckDB applier: the
        replication driver's apply step, on a primary (edge_types: those finish() would release) and a
        replica alike."""
        self.apply_replicated_many([(lsn, epoch, ops, edge_types)])

    def apply_replicated_many(self, records: list[tuple[int, int, list[Op], set[str] | None]]) -> None:
        """apply_replicated of consecutive committed records (lsn, epoch, ops, edge_types), oldest first, under
        one memory-turn and state-lock hold with one `memory_lsn` publication; a run of single-row inserts goes
        in as one upsert, as a local group's records do (`_apply_records`). Records already applied are skipped."""
        with self._memory_turn:
            records = [record for record in records if record[0] > self.memory_lsn]
            if not records:
                return
            expected = self.memory_lsn + 1
            for record in records:
                if record[0] != expected:
                    raise StorePoisoned(f"replicated apply of LSN {record[0]} after {expected - 1}")
                expected += 1
            with self.state_lock:
                self._apply_records([(lsn, ops) for lsn, _, ops, _ in records])
                for _, _, _, edge_types in records:
                    for name in edge_types or ():
                        self._inflight_edges[name] -= 1
                self.memory_lsn = records[-1][0]
                with self._applier_cv:
                    if not self._queue:
                        self._queue_since = time.monotonic()
                    self._queue.extend((lsn, epoch, ops) for lsn, epoch, ops, _ in records)
                    if len(self._queue) >= APPLY_BATCH_RECORDS_MIN:
                        self._applier_cv.notify_all()
            if self.on_memory is not None:
                self.on_memory(records[-1][0])
            self._drain()  # group commits waiting behind these records (notifies the other waiters)

    def _apply_group(self, tickets: list[_Ticket]) -> None:
        """Under the state lock: apply a group's records to memory in LSN order (`_apply_records`)."""
        self._apply_records([(ticket.lsn, ticket.ops) for ticket in tickets])  # type: ignore[misc]

    def _apply_records(self, records: list[tuple[int, list[Op]]]) -> None:
        """Under the state lock: apply records (lsn, ops) to memory in LSN order; a run of records that each
        insert new nodes of one type and shape as NodeRows (many single-row commits) goes in as one upsert."""
        index = 0
        while index < len(records):
            lsn, ops = records[index]
            first = fresh_rows_op(ops)
            end = index + 1
            if first is not None:
                assert first.rows is not None
                while end < len(records):
                    op = fresh_rows_op(records[end][1])
                    if op is None or op.name != first.name or op.rows.names != first.rows.names or (  # type: ignore[union-attr]
                            op.rows.kinds != first.rows.kinds):  # type: ignore[union-attr]
                        break
                    end += 1
            if end - index == 1:
                self._apply_memory(ops, lsn)
            else:
                run = [(other_lsn, other_ops[0]) for other_lsn, other_ops in records[index:end]]
                merged = merged_rows_op([op for _, op in run])
                self._view = None
                own_for(self, [merged])
                apply_fresh_rows(self, run, merged)
            index = end

    def _apply_memory(self, ops: list[Op], lsn: int) -> None:
        """apply_memory of the next record, under the state lock: the read view of the LSN before it stays
        as it is (its shared parts are forked first: versions.py), and the next reader gets a new one."""
        self._view = None
        own_for(self, ops)
        apply_memory(self, ops, lsn)
        for op in ops:
            if op.kind == OpKind.SCHEMA:
                self.memory_schema = Schema.from_dict(op.document)

    def read_view(self, *, tables: bool = False) -> ReadView:
        """The in-memory state as of `memory_lsn`, for reads without the state lock (`storage/versions.py`):
        the same object for every reader until the next record is applied. `tables`: ask for its table
        snapshot now (then it is sure to come; asked later, the applier may have gone past it)."""
        view = self._view
        if view is not None and (not tables or view.tables.wanted):
            return view
        with self.state_lock:
            view = self._view
            if view is None:
                if not self._view_seeded and self.tables.applied_lsn >= self.memory_lsn:  # no wait for the tables
                    self._seed_view_clock()
                view = self._view = ReadView(self)
            if tables:
                self._want_tables(view.tables)
            return view

    def _want_tables(self, holder: TablesAt) -> None:
        """Ask for `holder`'s table snapshot: the applier stops at its LSN until it is open. Raises
        TablesPassed when the tables are past it already."""
        with self._applier_cv:
            if holder.wanted or holder.cursor is not None:
                return
            if self._taken_lsn > holder.lsn:  # the applier took (or applied) records past it
                raise TablesPassed(holder.lsn)
            holder.wanted = True
            self._table_waits.setdefault(holder.lsn, []).append(weakref.ref(holder))
            self._applier_cv.notify_all()

    def tables_at(self, holder: TablesAt) -> None:
        """Block until `holder`'s table snapshot is open (the applier stops at its LSN until then); raises
        TablesPassed when it was not asked for in time (see `read_view`)."""
        if holder.cursor is not None:
            return
        self._want_tables(holder)
        self.wait_applied(holder.lsn)
        with self._applier_cv:
            if holder.cursor is None:
                invariant(self.tables.applied_lsn == holder.lsn, f"the tables passed LSN {holder.lsn} before "
                          f"its read view's snapshot was opened (at {self.tables.applied_lsn})")
                self._open_tables(holder)

    def _open_tables(self, holder: TablesAt) -> None:
        """Open `holder`'s snapshot now (under the applier's lock, the tables at its LSN)."""
        if self.closed:
            raise StoreClosed(f"store {self.path!r} is closed")
        holder.open(self.tables)
        self._table_snapshots.add(holder)

    def _serve_table_waits(self) -> int | None:
        """Under the applier's lock: open the snapshots waiting at the tables' LSN; return the next LSN
        the applier must stop at (None: none)."""
        applied = self.tables.applied_lsn
        for lsn in sorted(self._table_waits):
            if lsn > applied:
                return lsn
            for ref in self._table_waits.pop(lsn):
                holder = ref()
                if holder is not None and holder.cursor is None and lsn == applied:
                    self._open_tables(holder)
        return None

    def _retarget(self, key: Any, job: Any) -> None:
        """Under the state lock, before a background job installs: aim it at the live (owned) index."""
        if isinstance(key, tuple) and key and key[0] == "vectors" and hasattr(job, "index"):
            self._view = None  # unless a reader holds it, the view dies: nothing to fork for it
            index = own(self, "vectors", tuple(key[1:]))
            if index is not None:
                job.index = index

    def _own_everything(self) -> None:
        """Fork every part a read view shares (before a checkpoint rewrites indexes in place)."""
        self._view = None  # unless a reader holds it, the view dies: nothing to fork for it
        for kind in ("directory", "catalog", "view_clock"):
            own(self, kind)
        for kind in ("edges", "vectors", "keywords", "columns"):
            for key in list(getattr(self, kind)):
                own(self, kind, key)

    def _enqueue_many(self, tickets: list[_Ticket]) -> None:
        """Hand a group's memory-applied records to the DuckDB applier."""
        with self._applier_cv:
            if not self._queue:
                self._queue_since = time.monotonic()
            epoch = self.epoch
            self._queue.extend((ticket.lsn, epoch, ticket.ops) for ticket in tickets)  # type: ignore[misc]
            if len(self._queue) >= APPLY_BATCH_RECORDS_MIN:
                self._applier_cv.notify_all()

    def _enqueue(self, lsn: int, ops: list[Op]) -> None:
        """Hand a memory-applied record to the DuckDB applier."""
        with self._applier_cv:
            if not self._queue:
                self._queue_since = time.monotonic()
            self._queue.append((lsn, self.epoch, ops))
            if len(self._queue) >= APPLY_BATCH_RECORDS_MIN:
                self._applier_cv.notify_all()

    def view_lsn(self, principal: Principal, named: bool, view: ReadView | None = None) -> int:
        """The LSN of the last write `principal` could see (`knowledge/access/view_clock.py`), as of `view`
        (default: now); the first call after an open adds what the tables' `_lsn` columns show."""
        if view is not None and view.seeded:  # a view's clock is never written
            return view.view_clock.lsn_for(principal, named)
        with self.state_lock:
            if not self._view_seeded:
                self._seed_view_clock()
            lsn = self.view_clock.lsn_for(principal, named)
        return lsn if view is None else min(lsn, view.lsn)  # a view made before the clock could be seeded

    def _seed_view_clock(self) -> None:
        """Add what the tables' `_lsn` columns show to the view clock (once per open; under the state lock)."""
        self.wait_applied(self.memory_lsn)
        clock = own(self, "view_clock")
        seed_view_clock(clock, self.tables, self.directory, list(self.schema.nodes),
                        [name for name, edge in self.schema.edges.items() if not edge.hidden])
        self._view_seeded = True

    def fail(self, exc: BaseException, *, holding_memory_turn: bool = False) -> None:
        """Poison the store: every later call raises StorePoisoned until it is reopened.
        `holding_memory_turn`: the caller holds the memory-turn lock (not reentrant) already."""
        if self.failure is None:
            self.failure = exc
            log.error("store %s poisoned: %s", self.path, exc)
        if holding_memory_turn:
            self._fail_pending()
            self._memory_turn.notify_all()
        else:
            with self._memory_turn:
                self._fail_pending()
                self._memory_turn.notify_all()
        with self._applier_cv:
            self._applier_cv.notify_all()

    def wait_memory(self, lsn: int) -> None:
        """Block until memory reflects every record up to `lsn`."""
        with self._memory_turn:
            while self.memory_lsn < lsn:
                self._memory_turn.wait(0.5)

    # -- DuckDB applier -----------------------------------------------------------------------
    def _apply_loop(self) -> None:
        """Apply queued records to DuckDB in batches: when enough have queued, when the oldest has waited
        `apply_delay_ms`, or at once when a reader waits for them (or the store closes)."""
        delay_s = self.config.apply_delay_ms / 1000
        while True:
            with self._applier_cv:
                while not self.closed and not (self._queue and (
                        self._readers_waiting or len(self._queue) >= APPLY_BATCH_RECORDS_MIN
                        or time.monotonic() - self._queue_since >= delay_s)):
                    timeout = None if not self._queue else max(0.0, self._queue_since + delay_s - time.monotonic())
                    self._applier_cv.wait(timeout)
                if not self._queue and self.closed:
                    return
                batch = self._queue[:APPLY_BATCH_RECORDS_MAX]
                stop = self._serve_table_waits()  # a read view's table snapshot at `stop`: end the batch there
                if stop is not None:
                    batch = [record for record in batch if record[0] <= stop]
                del self._queue[:len(batch)]
                self._taken_lsn = max(self._taken_lsn, batch[-1][0])
                self._queue_since = time.monotonic()
            try:
                self.tables.apply(batch)
            except StorageFull as exc:  # durable in the WAL: retry until space is freed, serve reads meanwhile
                if not self._stalled(batch, exc):
                    return
                continue
            except BaseException as exc:  # the WAL holds the records; reopening replays them
                self.fail(exc)
                return
            with self._applier_cv:
                if self.applier_stalled is not None:
                    log.warning("store %s: space freed, the table applier caught up", self.path)
                self.applier_stalled = None
                self._retry_s = 0.0
                while self._unapplied and self._unapplied[0][0] <= batch[-1][0]:
                    self._unapplied_bytes -= self._unapplied.popleft()[1]
                self._serve_table_waits()
                self._applier_cv.notify_all()

    def _stalled(self, batch: list[tuple[int, int, list[Op]]], exc: StorageFull) -> bool:
        """Put a batch the full disk refused back in front and wait before the retry; False once closing
        (the records stay in the WAL, and the next open applies them)."""
        with self._applier_cv:
            if self.applier_stalled is None:
                log.warning("store %s: %s", self.path, exc)
            self.applier_stalled = exc
            self._queue[:0] = batch
            self._applier_cv.notify_all()  # readers waiting on the tables learn of it
            if self.closed:
                return False
            self._retry_s = min(APPLY_RETRY_S_MAX, max(APPLY_RETRY_S_MIN, 2 * self._retry_s))
            self._applier_cv.wait(self._retry_s)
            return not self.closed

    def wait_applied(self, lsn: int | None = None) -> None:
        """Block until DuckDB reflects every record up to `lsn` (default: everything committed now)."""
        target = self.memory_lsn if lsn is None else lsn
        if self.tables.applied_lsn >= target:
            return
        with self._applier_cv:
            self._readers_waiting += 1
            self._applier_cv.notify_all()
            stalled_until = None  # a stalled applier gets one retry (woken by this reader) before we give up
            try:
                while self.tables.applied_lsn < target:
                    if self.failure is not None:
                        raise StorePoisoned("the table applier failed; reopen the store") from self.failure
                    stalled = self.applier_stalled
                    if stalled is not None:
                        now = time.monotonic()
                        stalled_until = stalled_until or now + APPLY_RETRY_S_MAX + 0.5
                        if now >= stalled_until:
                            raise StorageFull(f"{stalled} (this read needs the tables up to LSN {target}; "
                                              f"searches and graph reads go on)", path=stalled.path) from stalled
                    self._applier_cv.wait(0.1 if stalled is not None else 0.5)
            finally:
                self._readers_waiting -= 1

    # -- maintenance ----------------------------------------------------------------------------
    def checkpoint(self) -> int:
        """Make DuckDB hold everything committed, fold the graph overlay, compact the vector indexes and
        write their snapshots, then drop WAL segments the checkpoint covers. Commits wait meanwhile.

        Returns the LSN the checkpoint covers.
        """
        with self.stage_lock:
            self.check_open()
            lsn = self.wal.last_lsn
            self.wait_memory(lsn)
            self.wait_applied(lsn)
            self.tables.checkpoint()
            os.makedirs(os.path.join(self.path, "snapshots"), exist_ok=True)
            with self.state_lock:
                self._own_everything()  # what follows rewrites indexes in place: read views keep theirs
                self.last_compaction = compact(self)  # keyword indexes, TTL stamps, DuckDB space (retention.py)
                for index in self.edges.values():
                    index.compact(self.directory.capacity, self.directory.alive)
                for (type_name, prop), vectors in self.vectors.items():
                    if vectors.needs_compaction():
                        job = compaction(vectors)
                        if job is None:
                            vectors.compact()  # no graph to rebuild: arrays only
                        else:  # searches keep the current graph until the compacted one is in
                            self.indexer.submit(("vectors", type_name, prop), job)
                    vectors.save(self.snapshot_path(type_name, prop), lsn)
                self.schedule_index_builds()
                for (type_name, prop), keywords in self.keywords.items():
                    write_snapshot(self.snapshot_path(type_name, prop, "keywords"), lsn, keywords.snapshot())
            with self.tables.lock:  # from now on a missing snapshot is worth a warning
                self.tables.con.execute("INSERT OR REPLACE INTO _meta VALUES ('snapshots_lsn', ?)", [str(lsn)])
            keep_from = lsn + 1 if self.replicator is None else self.replicator.retain_from(lsn + 1)
            if self.retain_floor is not None:
                keep_from = min(keep_from, self.retain_floor(keep_from))
            retire_live_segment(self.wal)  # the live segment goes too once covered (retention.py)
            self.wal.remove_segments_before(keep_from)  # replication keeps what lagging replicas still need
            return lsn

    def schedule_index_builds(self, *, tail_rows_max: int | None = None) -> int:
        """Queue the background HNSW builds that are due; return how many."""
        queued = 0
        with self.state_lock:
            for key, vectors in self.vectors.items():
                if self.indexer.is_pending(("vectors", *key)):
                    continue  # a compaction or build is under way; the next round sees what it left
                job = hnsw_job(vectors, tail_rows_max=tail_rows_max)
                if job is not None:
                    self.indexer.submit(("vectors", *key), job)
                    queued += 1
        return queued

    def build_indexes(self, *, wait: bool = True, timeout_s: float | None = None) -> bool:
        """Bring every HNSW graph up to all current rows in the background; with `wait`, block until the
        builds are in. Returns False when `timeout_s` passed first."""
        self.check_open()
        self.schedule_index_builds(tail_rows_max=0)
        if not wait:
            return True
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for _ in range(BUILD_ROUNDS_MAX):  # a compaction can leave a tail that one more build covers
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self.indexer.wait_idle(remaining):
                return False
            if not self.schedule_index_builds(tail_rows_max=0):
                return True
        return self.indexer.wait_idle(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def stats(self) -> dict[str, Any]:
        """Whole-store figures of the engine's parts."""
        return {"applied_lsn": self.tables.applied_lsn, "wal_first_lsn": self.wal.first_lsn,
                "fsyncs": self.wal.fsync_count, "recovery": self.wal.recovery.as_dict(),
                "storage_full": self.applier_stalled is not None,
                "row_cache": {"rows": len(self.row_cache), "hits": self.row_cache.hits,
                              "misses": self.row_cache.misses},
                "index_builds": {"pending": self.indexer.pending(), "installed": self.indexer.installed,
                                 "failed": self.indexer.failures},
                "vector_indexes": {f"{t}.{p}": {"rows": v.rows, "live": v.live_count, "graph_rows": v.hnsw_rows,
                                                    "device": v.scan_device, **v.calibration_stats()}
                                   for (t, p), v in self.vectors.items()}}

    def check_open(self) -> None:
        """Raise StoreClosed or StorePoisoned unless the engine can serve calls."""
        if self.closed:
            raise StoreClosed(f"store {self.path!r} is closed")
        if self.failure is not None:
            raise StorePoisoned(f"store {self.path!r} failed ({self.failure}); reopen it to recover") from self.failure

    def close(self) -> None:
        """Flush the table applier, stop the index builder and close the WAL and DuckDB."""
        if self.closed:
            return
        if self.sweeper is not None:
            self.sweeper.close()
        try:
            if self.failure is None:
                try:
                    self.wait_applied()
                except KnowledgeError:
                    pass
        finally:
            self.indexer.close()
            with self._applier_cv:
                self.closed = True
                self._applier_cv.notify_all()
            self._applier.join(timeout=30)
            self._view = None
            for holder in list(self._table_snapshots):  # read views' table snapshots end with the store
                holder.close()
            self._table_waits.clear()
            if self.failure is None:
                self._save_new_graphs()
                if self.tables.applied_lsn == self.memory_lsn:
                    try:
                        self.view_clock.save(self.path, self.memory_lsn)
                    except OSError as exc:  # the tables still give a lower bound (see view_clock.py)
                        log.warning("could not save the view clock at close: %s", exc)
            self.wal.close()
            self.tables.close()

    def _save_new_graphs(self) -> None:
        """Snapshot the vector indexes when a background build installed a graph since the last checkpoint
        (everything is applied by now, so the snapshot's LSN is the tables' LSN)."""
        if not any(vectors.graph_unsaved for vectors in self.vectors.values()):
            return
        lsn = self.tables.applied_lsn
        if lsn != self.memory_lsn:
            return
        os.makedirs(os.path.join(self.path, "snapshots"), exist_ok=True)
        try:
            for (type_name, prop), vectors in self.vectors.items():
                vectors.save(self.snapshot_path(type_name, prop), lsn)
        except OSError as exc:  # the previous snapshots plus the WAL still recover everything
            log.warning("could not save the vector snapshots at close: %s", exc)
