"""Online backup and restore: a consistent copy of a store at one LSN.

Backup holds the commit path for the duration of the copy: it waits until the tables reflect the
last committed LSN, checkpoints DuckDB, then copies the DuckDB file, the WAL segments and the
marker into a temporary directory beside the destination, fsyncs it and renames it into place.
A failed backup leaves no destination behind.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING

from knowledge.errors import BackupError
from knowledge.wal.log import fsync_directory, list_segments

if TYPE_CHECKING:
    from knowledge.store import Store

MANIFEST = "BACKUP"


def _fsync_tree(root: str) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(folder)


def _prepare_destination(destination: str) -> str:
    destination = os.path.abspath(destination)
    if os.path.exists(destination) and (not os.path.isdir(destination) or os.listdir(destination)):
        raise BackupError(f"destination {destination!r} exists and is not an empty directory")
    parent = os.path.dirname(destination)
    os.makedirs(parent, exist_ok=True)
    staging = destination + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    return staging


def _publish(staging: str, destination: str) -> None:
    _fsync_tree(staging)
    if os.path.isdir(destination):
        os.rmdir(destination)
    os.rename(staging, destination)
    fsync_directory(os.path.dirname(destination))


def backup_store(store: Store, destination: str) -> int:
    """Copy `store` to `destination` consistently at one LSN (commits wait meanwhile); return the LSN."""
    staging = _prepare_destination(destination)
    try:
        with store._stage_lock:
            lsn = store.memory_lsn
            store.wait_applied(lsn)
            store.tables.checkpoint()
            os.makedirs(os.path.join(staging, "wal"))
            with store.tables.lock:
                shutil.copyfile(os.path.join(store.path, "state.duckdb"), os.path.join(staging, "state.duckdb"))
            shutil.copyfile(os.path.join(store.path, "STORE"), os.path.join(staging, "STORE"))
            snapshots = os.path.join(store.path, "snapshots")
            if os.path.isdir(snapshots):  # index snapshots: written under the same lock, so consistent
                shutil.copytree(snapshots, os.path.join(staging, "snapshots"),
                                ignore=shutil.ignore_patterns("*.tmp"))
            for segment in list_segments(os.path.join(store.path, "wal")):
                target = os.path.join(staging, "wal", os.path.basename(segment.path))
                with open(segment.path, "rb") as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        with open(os.path.join(staging, MANIFEST), "w") as f:
            f.write(f"lsn={lsn}\nepoch={store.epoch}\n")
        _publish(staging, os.path.abspath(destination))
    except BackupError:
        raise
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise BackupError(f"backup to {destination!r} failed: {exc}") from exc
    return lsn


def restore_store(source: str, destination: str) -> int:
    """Copy the backup at `source` to a new store directory `destination`; return the LSN it holds.

    The copy is opened once (replaying its WAL) to prove it is a valid store before it is published.
    """
    from knowledge.store import Store, is_store

    if not is_store(source) or not os.path.isfile(os.path.join(source, "state.duckdb")):
        raise BackupError(f"{source!r} holds no backup (no STORE marker and state.duckdb)")
    staging = _prepare_destination(destination)
    try:
        shutil.copytree(source, staging, ignore=shutil.ignore_patterns("LOCK", MANIFEST))
        with Store(staging, create=False) as restored:
            lsn = restored.memory_lsn
        os.unlink(os.path.join(staging, "LOCK"))
        _publish(staging, os.path.abspath(destination))
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, BackupError):
            raise
        raise BackupError(f"restore from {source!r} failed: {exc}") from exc
    return lsn
