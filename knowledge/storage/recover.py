"""Rebuilding a store whose table file is damaged: a new store made from the old one's WAL (and, where
a checkpoint dropped the WAL's start, from a backup's tables plus the WAL after them).

The source is only read (under its directory lock); the new store is built in a staging directory
beside the destination, opened once to replay the log, and renamed into place: a failed recovery
leaves no destination behind.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from knowledge.config import StoreConfig
from knowledge.errors import BackupError, CorruptionError, KnowledgeError
from knowledge.storage.backup import _prepare_destination, _publish, copy_tables, holds_tables
from knowledge.storage.engine import MARKER, Engine, is_store
from knowledge.storage.lock import DirectoryLock
from knowledge.storage.tables import Tables
from knowledge.storage.wal.log import list_segments
from knowledge.storage.wal.manifest import manifest_path

TABLES = "state.duckdb"


def recover_store(source: str, destination: str, *, backup: str | None = None,
                  config: StoreConfig | None = None) -> dict[str, Any]:
    """Build a new store at `destination` from the WAL of the store at `source` (plus the tables of the
    backup at `backup` where the WAL no longer starts at LSN 1); return what was recovered:
    `lsn` (the last LSN the new store holds), `wal_first_lsn`, `wal_last_lsn`, `records_replayed`,
    `from_backup_lsn` and `lsn_ranges_lost`. Raises CorruptionError when the WAL cannot be joined to a
    backup, BackupError for a bad destination or backup."""
    source = os.path.abspath(source)
    wal_dir = os.path.join(source, "wal")
    segments = list_segments(wal_dir) if os.path.isdir(wal_dir) else []
    if not segments:
        raise CorruptionError(f"{source!r} holds no WAL segments to recover from (is it a store?)",
                              segment="wal", offset=0)
    source_lock = DirectoryLock(source)
    try:
        staging = _prepare_destination(destination, source)
        try:
            report = _rebuild(source, staging, segments, backup, config or StoreConfig())
            _publish(staging, os.path.abspath(destination))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    finally:
        source_lock.release()
    return report


def _rebuild(source: str, staging: str, segments: list[Any], backup: str | None,
             config: StoreConfig) -> dict[str, Any]:
    os.makedirs(os.path.join(staging, "wal"))
    for segment in segments:
        shutil.copyfile(segment.path, os.path.join(staging, "wal", os.path.basename(segment.path)))
    if os.path.isfile(manifest_path(os.path.join(source, "wal"))):
        shutil.copyfile(manifest_path(os.path.join(source, "wal")), manifest_path(os.path.join(staging, "wal")))
    first = segments[0].first_lsn
    from_backup = (_tables_from_backup(backup, staging, first, config)
                   if first > 1 or backup is not None else None)
    marker = os.path.join(source, MARKER)
    if os.path.isfile(marker):
        shutil.copyfile(marker, os.path.join(staging, MARKER))
    else:
        with open(os.path.join(staging, MARKER), "w") as f:
            f.write('{"format": "knowledge-store", "version": 1}')
    lock = DirectoryLock(staging)
    try:
        engine = Engine(staging, config, allow_data_loss=True)
        try:
            recovery = engine.wal.recovery.as_dict()
            report = {"lsn": engine.memory_lsn, "wal_first_lsn": first, "wal_last_lsn": engine.wal.last_lsn,
                      "records_replayed": engine.memory_lsn - (from_backup or 0), "from_backup_lsn": from_backup,
                      "lsn_ranges_lost": recovery["lsn_ranges_lost"], "truncated": recovery["truncated"]}
        finally:
            engine.close()
    finally:
        lock.release()
    os.unlink(os.path.join(staging, "LOCK"))
    return report


def _tables_from_backup(backup: str | None, staging: str, wal_first_lsn: int, config: StoreConfig) -> int:
    """Copy a backup's table file into the new store; the LSN it holds, which must reach the WAL."""
    if backup is None:
        raise CorruptionError(f"the WAL starts at LSN {wal_first_lsn} (a checkpoint dropped the records before "
                              f"it): pass a backup taken at LSN {wal_first_lsn - 1} or later (--backup DIR) to "
                              f"recover from", lsn_range=(1, wal_first_lsn - 1))
    tables_file = os.path.join(backup, TABLES)
    if not is_store(backup) or not holds_tables(backup):
        raise BackupError(f"{backup!r} holds no backup (no STORE marker and {TABLES})")
    target = os.path.join(staging, TABLES)
    copy_tables(backup, target, config.keyring())  # an encrypted store's backup holds it sealed
    try:
        tables = Tables(target)
    except KnowledgeError as exc:
        raise BackupError(f"the backup's table file {tables_file} cannot be read: {exc}") from exc
    try:
        applied = tables.applied_lsn
    finally:
        tables.close()
    if applied + 1 < wal_first_lsn:
        raise CorruptionError(f"the backup {backup!r} holds records up to LSN {applied} but the WAL starts at LSN "
                              f"{wal_first_lsn}: records in between are in neither; use a newer backup",
                              lsn_range=(applied + 1, wal_first_lsn - 1))
    return applied
