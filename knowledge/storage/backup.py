"""Online backup and restore: a consistent copy of a store at one LSN.

Backup holds the commit path for the duration of the copy: it waits until the tables reflect the
last committed LSN, checkpoints DuckDB, then copies the DuckDB file, the WAL segments and the
marker into a temporary directory beside the destination, fsyncs it and renames it into place.
A failed backup leaves no destination behind.

An encrypted store's backup holds nothing in plaintext but the marker and the two manifests (LSNs):
its WAL segments and index snapshots are copied as they lie (sealed; any still in plaintext from before
the store was encrypted are sealed in the copy), and its table file, plaintext
in the store (README: Encryption at rest), is sealed under the current key as `state.duckdb.enc`
(knowledge/storage/crypto.py:seal_file); restore and recover open it with the same keys.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING

from knowledge.errors import BackupError, CorruptionError, EncryptionKeyError
from knowledge.storage import crypto
from knowledge.storage.engine import MARKER, is_store
from knowledge.storage.wal import record as frames
from knowledge.storage.wal.log import Segment, fsync_directory, list_segments, scan_segment
from knowledge.storage.wal.manifest import manifest_path

if TYPE_CHECKING:
    from knowledge.storage.state import EngineState

MANIFEST = "BACKUP"
TABLES = "state.duckdb"
SEALED_TABLES = TABLES + ".enc"  # an encrypted store's table file, in its backups


def holds_tables(path: str) -> bool:
    """Whether the directory `path` holds a table file, plaintext or sealed."""
    return os.path.isfile(os.path.join(path, TABLES)) or os.path.isfile(os.path.join(path, SEALED_TABLES))


def copy_tables(backup: str, target: str, keyring: crypto.Keyring | None) -> None:
    """Copy the backup's table file to the file `target`, opening it when it is sealed (a key not held:
    EncryptionKeyMissing / EncryptionKeyWrong; a chunk that fails its GCM tag: CorruptionError)."""
    sealed = os.path.join(backup, SEALED_TABLES)
    if os.path.isfile(sealed):
        crypto.unseal_file(sealed, target, keyring)
    else:
        shutil.copyfile(os.path.join(backup, TABLES), target)


def fsync_tree(root: str) -> None:
    """fsync every file below `root`, then each folder (so a rename of `root` publishes durable contents)."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(folder)


def _prepare_destination(destination: str, store_path: str | None = None) -> str:
    destination = os.path.abspath(destination)
    if store_path is not None:
        store_real, target_real = os.path.realpath(store_path), os.path.realpath(destination)
        if os.path.commonpath([store_real, target_real]) == store_real:
            raise BackupError(f"destination {destination!r} is inside the store {store_path!r}: a backup must "
                              f"live outside the directory it copies")
    if os.path.exists(destination) and (not os.path.isdir(destination) or os.listdir(destination)):
        raise BackupError(f"destination {destination!r} exists and is not an empty directory")
    parent = os.path.dirname(destination)
    os.makedirs(parent, exist_ok=True)
    staging = destination + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    return staging


def _publish(staging: str, destination: str) -> None:
    fsync_tree(staging)
    if os.path.isdir(destination):
        os.rmdir(destination)
    os.rename(staging, destination)
    fsync_directory(os.path.dirname(destination))


def _seal_segment(segment: Segment, target: str, keyring: crypto.Keyring, *, is_last: bool) -> None:
    """Copy a plaintext WAL segment (written before the store was encrypted) sealed under the current key."""
    records, _ = scan_segment(segment, is_last=is_last)
    sealer = keyring.new_sealer(crypto.KIND_WAL)
    with open(target, "wb") as dst:
        dst.write(sealer.header.encode())
        for _, rec in records:
            dst.write(frames.encode_sealed_frame(rec.lsn, rec.epoch, rec.timestamp_ns, rec.payload, sealer.seal,
                                                 crypto.SEAL_OVERHEAD))


def _seal_plaintext_snapshots(directory: str, keyring: crypto.Keyring) -> None:
    """Seal, in the backup's copy, the snapshots written before the store was encrypted."""
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if crypto.read_header(path) is None:
            with open(path, "rb") as f:
                data = f.read()
            with open(path, "wb") as f:
                f.write(crypto.seal_bytes(data, keyring, crypto.KIND_SNAPSHOT))


def backup_store(engine: EngineState, destination: str, *, view_clock: bool = False) -> int:
    """Copy the store `engine` serves to `destination` consistently at one LSN (commits wait
    meanwhile); return the LSN. Refuses (BackupError) a destination inside the store or one that
    exists and is not an empty directory. `view_clock`: the copy also gets the view clock (what each
    non-admin's view LSN is) as of its LSN, which the tables alone only bound from below (a copy that
    serves reads at once: knowledge.server.read_processes)."""
    staging = _prepare_destination(destination, engine.path)
    try:
        with engine.stage_lock:
            if view_clock:  # every logged record in memory, so the clock and the copy's log end agree
                engine.wait_memory(engine.wal.last_lsn)
            lsn = engine.memory_lsn
            keyring = getattr(engine, "keyring", None)
            engine.wait_applied(lsn)
            engine.tables.checkpoint()
            os.makedirs(os.path.join(staging, "wal"))
            with engine.tables.lock:
                if keyring is not None:  # the one file the store keeps in plaintext: sealed in the backup
                    crypto.seal_file(os.path.join(engine.path, TABLES), os.path.join(staging, SEALED_TABLES), keyring)
                else:
                    shutil.copyfile(os.path.join(engine.path, TABLES), os.path.join(staging, TABLES))
            shutil.copyfile(os.path.join(engine.path, MARKER), os.path.join(staging, MARKER))
            snapshots = os.path.join(engine.path, "snapshots")
            if os.path.isdir(snapshots):  # index snapshots: written under the same lock, so consistent
                shutil.copytree(snapshots, os.path.join(staging, "snapshots"),
                                ignore=shutil.ignore_patterns("*.tmp"))
                if keyring is not None:
                    _seal_plaintext_snapshots(os.path.join(staging, "snapshots"), keyring)
            segments = list_segments(os.path.join(engine.path, "wal"))
            for index, segment in enumerate(segments):
                target = os.path.join(staging, "wal", os.path.basename(segment.path))
                if keyring is not None and crypto.read_header(segment.path) is None:
                    _seal_segment(segment, target, keyring, is_last=index == len(segments) - 1)
                    continue
                with open(segment.path, "rb") as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            wal_manifest = manifest_path(os.path.join(engine.path, "wal"))
            if os.path.isfile(wal_manifest):  # the segments' manifest, so the copy checks them on open
                shutil.copyfile(wal_manifest, manifest_path(os.path.join(staging, "wal")))
            if view_clock:
                with engine.state_lock:
                    engine.view_clock.save(staging, lsn)
        with open(os.path.join(staging, MANIFEST), "w") as f:
            f.write(f"lsn={lsn}\nepoch={engine.epoch}\n")
            if keyring is not None:
                f.write(f"key_id={keyring.current_id}\n")
        _publish(staging, os.path.abspath(destination))
    except BackupError:
        raise
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise BackupError(f"backup to {destination!r} failed: {exc}") from exc
    return lsn


def restore_store(source: str, destination: str, verify: Callable[[str], int],
                  keyring: crypto.Keyring | None = None) -> int:
    """Copy the backup at `source` to a new store directory `destination`; return the LSN it holds.

    `verify(path)` opens the copy once (replaying its WAL) to prove it is a valid store before it is
    published, and returns the LSN it holds (`knowledge/store.py:restore_store` passes an open).
    An encrypted backup needs its keys (`keyring`): a key not held raises EncryptionKeyMissing /
    EncryptionKeyWrong naming the file, a sealed file that fails its GCM tag CorruptionError; the backup
    is only read, and no destination is left behind.
    """
    if not is_store(source) or not holds_tables(source):
        raise BackupError(f"{source!r} holds no backup (no STORE marker and state.duckdb)")
    crypto.check_files(crypto.store_files(source) + [os.path.join(source, SEALED_TABLES)], keyring)
    staging = _prepare_destination(destination)
    try:
        shutil.copytree(source, staging, ignore=shutil.ignore_patterns("LOCK", MANIFEST, SEALED_TABLES))
        if os.path.isfile(os.path.join(source, SEALED_TABLES)):
            copy_tables(source, os.path.join(staging, TABLES), keyring)
        lsn = verify(staging)
        os.unlink(os.path.join(staging, "LOCK"))
        _publish(staging, os.path.abspath(destination))
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, (BackupError, EncryptionKeyError)) or (
                isinstance(exc, CorruptionError) and exc.segment == SEALED_TABLES):
            raise
        raise BackupError(f"restore from {source!r} failed: {exc}") from exc
    return lsn
