"""Snapshot transfer: a consistent backup of the primary streamed to a replica and installed atomically.

Primary (`SnapshotSource`): for an InstallSnapshot at position P it takes a consistent backup
(knowledge.storage.backup.backup_store) while the store's tables stand exactly at P, in a folder beside
the store (`.<name>.replication-out/<epoch>-<lsn>`), and serves it with `chunks()`: a header naming
every file and its size, then the files in chunks of CHUNK_BYTES, each with its CRC-32, a SHA-256 per
file and one over the whole set at the end. Backups no replica is being offered any more are removed.

Replica (`receive`, then `install`): the chunks go into `<store>/replication-snapshot.partial`; every
checksum and size is verified and everything fsynced before the folder is renamed to
`<store>/replication-snapshot` (the commit point; the STORE marker is written last, so a partial folder
is never a store). `install` (store closed) swaps the snapshot's files into the store directory, leaving
the lock, the hard state (REPLICATION) and the audit files in place; it can be rerun after a crash at
any point, and `recover_incoming` (before the store opens) finishes an install or drops a partial one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

from knowledge.errors import BackupError, SnapshotTransferFailed
from knowledge.replication.lsn import Position
from knowledge.storage.backup import MANIFEST, backup_store, fsync_tree
from knowledge.storage.engine import MARKER
from knowledge.storage.wal.log import fsync_directory

log = logging.getLogger("knowledge.replication")
CHUNK_BYTES = 1 << 20
INCOMING = "replication-snapshot"
PARTIAL = INCOMING + ".partial"
INSTALLING = "INSTALLING"  # inside the complete folder: the old files are gone, the moves may be under way
KEPT = {"LOCK", MARKER, MANIFEST, INSTALLING}  # in the snapshot folder but never moved into the store
REPLACED = ("state.duckdb", "state.duckdb.wal", "snapshots", "wal", "view_lsn.json")  # derived state, dropped
_CHUNK = struct.Struct(">IQI")  # file index, offset, crc32
_END = struct.Struct(">I")


def outgoing_root(store_path: str) -> str:
    """Where a primary keeps the backups it serves: beside the store (a backup may not be inside it)."""
    store_path = os.path.abspath(store_path)
    return os.path.join(os.path.dirname(store_path), f".{os.path.basename(store_path)}.replication-out")


def _name(position: Position) -> str:
    return f"{position.epoch}-{position.lsn}"


def _files(root: str) -> list[str]:
    out = []
    for folder, _, names in os.walk(root):
        for name in names:
            out.append(os.path.relpath(os.path.join(folder, name), root))
    return sorted(out)


class SnapshotSource:
    """The primary's side: backups at given positions, kept while some replica is offered one."""

    def __init__(self, store_path: str) -> None:
        self.root = outgoing_root(store_path)
        self.taken = 0
        self.bytes_served = 0

    def path(self, position: Position) -> str:
        return os.path.join(self.root, _name(position))

    def prepare(self, engine: Any, position: Position) -> str:
        """The backup at `position`, taken now if not held (the tables must stand at position.lsn).

        SnapshotTransferFailed when the store is elsewhere or the backup fails."""
        target = self.path(position)
        if os.path.isfile(os.path.join(target, MANIFEST)):
            return target
        if engine.memory_lsn != position.lsn:
            raise SnapshotTransferFailed(f"cannot take a snapshot at {position}: the store stands at LSN "
                                         f"{engine.memory_lsn}")
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(self.root, exist_ok=True)
        try:
            lsn = backup_store(engine, target)
        except BackupError as exc:
            raise SnapshotTransferFailed(f"snapshot at {position}: {exc}") from exc
        if lsn != position.lsn:
            shutil.rmtree(target, ignore_errors=True)
            raise SnapshotTransferFailed(f"the backup for a snapshot at {position} came out at LSN {lsn}")
        self.taken += 1
        return target

    def keep_only(self, positions: Iterable[Position]) -> None:
        """Remove every held backup but those at `positions` (the ones still on offer)."""
        wanted = {_name(p) for p in positions}
        if not os.path.isdir(self.root):
            return
        for name in os.listdir(self.root):
            if name not in wanted and not name.endswith(".partial"):
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)

    def chunks(self, position: Position, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        """The stream for the backup at `position`; SnapshotTransferFailed when it is not held."""
        root = self.path(position)
        if not os.path.isfile(os.path.join(root, MANIFEST)):
            raise SnapshotTransferFailed(f"no snapshot at {position} is on offer here")
        names = _files(root)
        sizes = [os.path.getsize(os.path.join(root, name)) for name in names]
        yield b"H" + json.dumps({"position": [position.epoch, position.lsn], "files": names,
                                 "sizes": sizes}).encode()
        total = hashlib.sha256()
        for index, name in enumerate(names):
            digest = hashlib.sha256()
            offset = 0
            with open(os.path.join(root, name), "rb") as f:
                while True:
                    data = f.read(chunk_bytes)
                    if not data:
                        break
                    digest.update(data)
                    yield b"C" + _CHUNK.pack(index, offset, zlib.crc32(data)) + data
                    offset += len(data)
                    self.bytes_served += len(data)
            total.update(digest.digest())
            yield b"E" + _END.pack(index) + digest.digest()
        yield b"D" + total.digest()


def receive(stream: Iterable[bytes], store_path: str, position: Position) -> tuple[str, int]:
    """Write the chunks of `stream` into the store's partial snapshot folder, verify them and rename it
    complete; return (the complete folder, bytes received). SnapshotTransferFailed on any mismatch or a
    stream that ends early (the partial folder is then removed)."""
    partial = os.path.join(store_path, PARTIAL)
    complete = os.path.join(store_path, INCOMING)
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(complete, ignore_errors=True)
    os.makedirs(partial)
    received = 0
    try:
        names, sizes, done = _receive_into(stream, partial, position)
        received = sum(sizes)
        if not done:
            raise SnapshotTransferFailed(f"the snapshot stream at {position} ended before its last chunk")
        if MARKER not in names:
            raise SnapshotTransferFailed(f"the snapshot at {position} holds no {MARKER} marker")
        os.rename(os.path.join(partial, MARKER + ".incoming"), os.path.join(partial, MARKER))
        fsync_tree(partial)
        os.rename(partial, complete)
        fsync_directory(store_path)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return complete, received


def _receive_into(stream: Iterable[bytes], partial: str, position: Position) -> tuple[list[str], list[int], bool]:
    names: list[str] = []
    sizes: list[int] = []
    written: list[int] = []
    digests: list[Any] = []
    handles: dict[int, Any] = {}
    total = hashlib.sha256()
    done = False
    try:
        for message in stream:
            kind, body = message[:1], message[1:]
            if kind == b"H":
                header = json.loads(body)
                if Position(*header["position"]) != position:
                    raise SnapshotTransferFailed(f"asked for a snapshot at {position}, got {header['position']}")
                names, sizes = [str(n) for n in header["files"]], [int(s) for s in header["sizes"]]
                for name in names:
                    if os.path.isabs(name) or ".." in name.split(os.sep):
                        raise SnapshotTransferFailed(f"snapshot file name {name!r} leaves the folder")
                written, digests = [0] * len(names), [hashlib.sha256() for _ in names]
            elif kind == b"C":
                index, offset, crc = _CHUNK.unpack_from(body)
                data = body[_CHUNK.size:]
                if index >= len(names) or offset != written[index] or zlib.crc32(data) != crc:
                    raise SnapshotTransferFailed(f"snapshot chunk of file {index} at {offset} is damaged or "
                                                 f"out of order")
                if index not in handles:
                    name = names[index] + (".incoming" if names[index] == MARKER else "")
                    path = os.path.join(partial, name)
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    handles[index] = open(path, "wb")  # noqa: SIM115 - closed below
                handles[index].write(data)
                digests[index].update(data)
                written[index] += len(data)
            elif kind == b"E":
                (index,) = _END.unpack_from(body)
                digest = body[_END.size:]
                if index >= len(names) or written[index] != sizes[index] or digests[index].digest() != digest:
                    raise SnapshotTransferFailed(f"snapshot file {names[index] if index < len(names) else index} "
                                                 f"does not match its size or SHA-256")
                if index not in handles:  # an empty file
                    name = names[index] + (".incoming" if names[index] == MARKER else "")
                    path = os.path.join(partial, name)
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    open(path, "wb").close()
                else:
                    handles.pop(index).close()
                total.update(digest)
            elif kind == b"D":
                if total.digest() != body or any(w != s for w, s in zip(written, sizes, strict=True)):
                    raise SnapshotTransferFailed(f"the snapshot at {position} does not match its checksum")
                done = True
            else:
                raise SnapshotTransferFailed(f"unknown snapshot stream message {kind!r}")
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise SnapshotTransferFailed(f"malformed snapshot stream: {exc}") from None
    finally:
        for handle in handles.values():
            handle.close()
    return names, sizes, done


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def install(store_path: str) -> None:
    """Swap the complete snapshot folder's files into the (closed) store; safe to rerun after a crash."""
    incoming = os.path.join(store_path, INCOMING)
    flag = os.path.join(incoming, INSTALLING)
    if not os.path.exists(flag):  # phase 1: drop the old state (the snapshot still holds every new file)
        for name in {*REPLACED, *(n for n in os.listdir(incoming) if n not in KEPT)}:
            _remove(os.path.join(store_path, name))
        fsync_directory(store_path)
        with open(flag, "w") as f:
            f.flush()
            os.fsync(f.fileno())
        fsync_directory(incoming)
    for name in sorted(os.listdir(incoming)):  # phase 2: move the new files in
        if name in KEPT:
            continue
        _remove(os.path.join(store_path, name))
        os.rename(os.path.join(incoming, name), os.path.join(store_path, name))
    fsync_directory(store_path)
    shutil.rmtree(incoming)
    fsync_directory(store_path)


def recover_incoming(store_path: str) -> bool:
    """Before opening a store: drop a partial snapshot, finish installing a complete one (True then)."""
    shutil.rmtree(os.path.join(store_path, PARTIAL), ignore_errors=True)
    if os.path.isdir(os.path.join(store_path, INCOMING)):
        log.warning("finishing the install of the snapshot received before a crash in %s", store_path)
        install(store_path)
        return True
    return False
