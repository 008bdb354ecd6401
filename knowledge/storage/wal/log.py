"""WriteAheadLog: append, group-commit fsync, recovery scan and reads over segment files.

Guarantees:
- `append` assigns the next LSN and writes the frame; it is durable once `sync_to(lsn)` returns.
- `sync_to` is group commit: concurrent callers share one fsync; a caller whose record was
  covered by someone else's fsync returns without one.
- The live segment is preallocated with written zeros ahead of the appends, so a commit's sync is
  an fdatasync that moves only data (no block allocation, no size change to journal). Sealed
  segments and a cleanly closed log hold no zero tail; after a crash, recovery truncates it.
- `open` scans every segment against the manifest (wal/MANIFEST): a torn record at the very tail
  is truncated and reported (log line, `recovery` report); a missing segment, a segment shorter than
  it was sealed, or damage before the tail raises CorruptionError naming the segment, byte offset and
  LSN range, and nothing is modified, unless the log is opened with allow_data_loss=True.
- A full disk fails an append with StorageFull and leaves the log as it was: the next append works
  once space is freed.
- With a keyring (knowledge/storage/crypto.py) every new segment is encrypted: a plaintext header
  names its key id and salt, and each record's payload is sealed with AES-256-GCM under the segment's
  own key and a fresh nonce. Segments under an older key (or plaintext ones) stay readable; the first
  append after such a log is opened starts a new segment under the current key.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator

from knowledge.errors import CorruptionError, InvalidArgument, StorageFull, StorePoisoned, invariant
from knowledge.storage import crypto
from knowledge.storage.wal import record as frames
from knowledge.storage.wal.manifest import Manifest, SegmentEntry, write_manifest
from knowledge.storage.wal.record import Record
from knowledge.storage.wal.recovery import RecoveryReport, is_disk_full, recover_log, set_aside
from knowledge.storage.wal.scan import Segment, fsync_directory, list_segments, scan_segment
from knowledge.storage.wal.segments import segment_name

__all__ = ["Segment", "WriteAheadLog", "fsync_directory", "list_segments", "scan_segment"]

log = logging.getLogger("knowledge.wal")
SEGMENT_BYTES_MAX = 64 << 20
PREALLOCATE_BYTES = 4 << 20  # zeros written ahead of small appends
PREALLOCATE_FRAME_BYTES_MAX = 256 << 10  # larger frames extend the file themselves (no double write)
_ZEROS = bytes(1 << 20)
_datasync = getattr(os, "fdatasync", os.fsync)  # fdatasync also flushes a changed file size


def _write_all(fd: int, data: bytes, offset: int) -> None:
    """pwrite all of `data` at `offset` (a short write continues; a full disk raises OSError ENOSPC)."""
    view = memoryview(data)
    done = 0
    while done < len(data):
        written = os.pwrite(fd, view[done:], offset + done)
        if written <= 0:
            raise OSError(errno.ENOSPC, "no progress writing the WAL")
        done += written


class WriteAheadLog:
    """The log in one directory. Thread-safe: appends serialise, syncs are shared."""

    def __init__(self, directory: str, *, fsync: bool = True, segment_bytes_max: int = SEGMENT_BYTES_MAX,
                 preallocate_bytes: int = PREALLOCATE_BYTES, allow_data_loss: bool = False,
                 keyring: crypto.Keyring | None = None) -> None:
        invariant(segment_bytes_max > 0 and preallocate_bytes >= 0, "WAL sizes must be positive")
        self.directory = directory
        self.keyring = keyring
        self._sealer: crypto.Sealer | None = None  # the live segment's, when it is encrypted
        self._live_start = 0  # where the live segment's frames start (after its header, when encrypted)
        self._roll_pending = False  # the live segment is not under the current key: the next append rolls
        self.fsync_enabled = fsync
        self.segment_bytes_max = segment_bytes_max
        self.preallocate_bytes = preallocate_bytes
        self._append_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._segments: list[Segment] = []
        self._fd = -1
        self._segment_bytes = 0  # bytes of frames in the live segment
        self._allocated_bytes = 0  # file size of the live segment (frames, then zeros)
        self._last_lsn = 0
        self._last_epoch = 0
        self._durable_lsn = 0
        self._failed: BaseException | None = None
        self.fsync_count = 0
        self.on_sync: Callable[[float], None] | None = None  # told each sync's seconds (server metrics)
        self.recovery = RecoveryReport()
        os.makedirs(directory, exist_ok=True)
        self._recover(allow_data_loss)

    # -- recovery ---------------------------------------------------------------------------
    def _recover(self, allow_data_loss: bool) -> None:
        recovered = recover_log(self.directory, allow_data_loss=allow_data_loss, fsync=self.fsync_enabled,
                                keyring=self.keyring)
        self.recovery = recovered.report
        self._segments = recovered.segments
        self._last_lsn = self._durable_lsn = recovered.last_lsn
        self._last_epoch = recovered.last_epoch
        self._segment_bytes = self._allocated_bytes = recovered.live_bytes
        if self._segments:
            self._fd = os.open(self._segments[-1].path, os.O_WRONLY)
            self._open_live(self._segments[-1], holds_records=recovered.last_lsn >= self._segments[-1].first_lsn)

    def _open_live(self, live: Segment, *, holds_records: bool) -> None:
        """Take up the live segment: append under its key when that is the current one; otherwise roll
        at the next append, or (when it holds no record) give it a fresh header under the current key."""
        self._sealer, self._live_start, self._roll_pending = None, 0, False
        with open(live.path, "rb") as f:
            prefix = f.read(crypto.FILE_HEADER_BYTES)
        header = crypto.parse_header(prefix, live.path) if self._segment_bytes and crypto.is_encrypted(prefix) else None
        if header is not None:
            self._live_start = crypto.FILE_HEADER_BYTES
        current = self.keyring.current_id if self.keyring is not None else None
        if (header.key_id if header is not None else None) == current:
            if header is not None and self.keyring is not None:
                self._sealer = self.keyring.sealer(header, live.path)
            return
        if holds_records:
            self._roll_pending = True
            return
        os.ftruncate(self._fd, 0)  # no record in it: nothing is lost by rewriting its header
        self._sealer = self._write_header(self._fd)
        self._segment_bytes = self._allocated_bytes = self._live_start = crypto.FILE_HEADER_BYTES if self._sealer else 0

    def _write_header(self, fd: int) -> crypto.Sealer | None:
        """Write an empty segment's header under the current key, durably; None when not encrypting."""
        if self.keyring is None:
            return None
        sealer = self.keyring.new_sealer(crypto.KIND_WAL)
        _write_all(fd, sealer.header.encode(), 0)
        if self.fsync_enabled:
            os.fsync(fd)
        return sealer

    def _manifest(self) -> Manifest:
        """The manifest for the segments held now (sealed ones with their last LSN)."""
        entries = [SegmentEntry(seg.first_lsn, self._segments[i + 1].first_lsn - 1)
                   for i, seg in enumerate(self._segments[:-1])]
        if self._segments:
            entries.append(SegmentEntry(self._segments[-1].first_lsn, None))
        return Manifest(self.first_lsn, entries)

    def _write_manifest(self) -> None:
        write_manifest(self.directory, self._manifest(), fsync=self.fsync_enabled)

    # -- positions --------------------------------------------------------------------------
    @property
    def last_lsn(self) -> int:
        return self._last_lsn

    @property
    def last_epoch(self) -> int:
        return self._last_epoch

    @property
    def durable_lsn(self) -> int:
        return self._durable_lsn

    @property
    def segments(self) -> list[Segment]:
        """The segments held now, oldest first."""
        return list(self._segments)

    @property
    def first_lsn(self) -> int:
        """The oldest LSN still held (1 for an empty log)."""
        return self._segments[0].first_lsn if self._segments else self._last_lsn + 1

    # -- writing ----------------------------------------------------------------------------
    def append(self, payload: bytes, epoch: int, timestamp_ns: int | None = None) -> int:
        """Write one record with the next LSN and return that LSN (not yet durable).

        Raises StorageFull (naming the segment) when the disk has no room; the log is then as before.
        """
        with self._append_lock:
            self._check_healthy()
            if epoch < self._last_epoch:
                invariant(False, f"epoch went back from {self._last_epoch} to {epoch}")
            lsn = self._last_lsn + 1
            self._write_frame(lsn, epoch, time.time_ns() if timestamp_ns is None else timestamp_ns, payload)
            return lsn

    def append_many(self, payloads: list[bytes], epoch: int, timestamp_ns: int | None = None) -> int:
        """Write one record per payload, with consecutive LSNs, in one write; return the first LSN (not
        yet durable). All or nothing: on StorageFull (or any failure) no record of them is in the log and
        the log is as before. A group commit's records go into one segment (rolled first when they would
        overflow the live one)."""
        invariant(bool(payloads), "append_many needs at least one payload")
        with self._append_lock:
            self._check_healthy()
            if epoch < self._last_epoch:
                invariant(False, f"epoch went back from {self._last_epoch} to {epoch}")
            first = self._last_lsn + 1
            stamp = time.time_ns() if timestamp_ns is None else timestamp_ns
            self._write_frames([(first + i, payload) for i, payload in enumerate(payloads)], epoch, stamp)
            return first

    def append_record(self, lsn: int, epoch: int, timestamp_ns: int, payload: bytes) -> None:
        """Write a record that arrives with its LSN, epoch and timestamp set (a replica's copy of the
        primary's frame); not yet durable. InvalidArgument unless `lsn` is the next LSN and `epoch` is
        not older than the last record's."""
        with self._append_lock:
            self._check_healthy()
            if lsn != self._last_lsn + 1:
                raise InvalidArgument(f"WAL record LSN {lsn} does not follow the log's last LSN {self._last_lsn}")
            if epoch < self._last_epoch:
                raise InvalidArgument(f"WAL record LSN {lsn} has epoch {epoch}, older than the log's last "
                                      f"epoch {self._last_epoch}")
            self._write_frame(lsn, epoch, timestamp_ns, payload)

    def _write_frame(self, lsn: int, epoch: int, timestamp_ns: int, payload: bytes) -> None:
        """Under the append lock: write the frame of record `lsn` at the live segment's end."""
        self._write_frames([(lsn, payload)], epoch, timestamp_ns)

    def _write_frames(self, records: list[tuple[int, bytes]], epoch: int, timestamp_ns: int) -> None:
        """Under the append lock: write the frames of `records` (consecutive (lsn, payload) pairs, the
        first the next LSN) at the live segment's end, in one write."""
        overhead = crypto.SEAL_OVERHEAD if self.keyring is not None else 0
        for _, payload in records:
            if len(payload) > frames.PAYLOAD_BYTES_MAX - overhead:
                raise ValueError(f"payload of {len(payload)} bytes exceeds {frames.PAYLOAD_BYTES_MAX - overhead}")
        frame_bytes = sum(frames.HEADER_BYTES + len(payload) + overhead for _, payload in records)
        frame = b""
        try:
            if self._fd < 0 or self._roll_pending or (self._segment_bytes + frame_bytes > self.segment_bytes_max
                                                       and self._segment_bytes > self._live_start):
                self._roll(records[0][0])
            if self._sealer is not None:
                seal = self._sealer.seal
                parts = [frames.encode_sealed_frame(lsn, epoch, timestamp_ns, payload, seal, overhead)
                         for lsn, payload in records]
            else:
                parts = [frames.encode_frame(lsn, epoch, timestamp_ns, payload) for lsn, payload in records]
            frame = parts[0] if len(parts) == 1 else b"".join(parts)
            end = self._segment_bytes + len(frame)
            try:
                if self.preallocate_bytes and end > self._allocated_bytes and len(frame) <= PREALLOCATE_FRAME_BYTES_MAX:
                    self._preallocate(end)
                _write_all(self._fd, frame, self._segment_bytes)
            except BaseException as exc:
                self._undo_partial_write(exc)
                raise
        except OSError as exc:
            if is_disk_full(exc) and self._failed is None:
                where = self._segments[-1].path if self._segments else self.directory
                raise StorageFull(f"no space left on the device holding {where} for a {frame_bytes}-byte WAL "
                                  f"record; the commit was not made (free space, then retry)",
                                  path=where) from exc
            raise
        self._segment_bytes = end
        self._allocated_bytes = max(self._allocated_bytes, end)
        self._last_lsn = records[-1][0]
        self._last_epoch = epoch

    def truncate_after(self, lsn: int) -> int:
        """Drop every record after `lsn` (a deposed primary's or a divergent replica's unacknowledged
        tail) and make the cut durable; returns how many records went.

        The manifest is rewritten first, then later segments are unlinked and the segment holding `lsn`
        is cut: a crash in between leaves some dropped records in place (an unacknowledged tail that
        replication truncates again), never a gap. InvalidArgument for an LSN below the retained log.
        """
        with self._append_lock:
            self._check_healthy()
            if lsn >= self._last_lsn:
                return 0
            if lsn < self.first_lsn - 1 or lsn < 0:
                raise InvalidArgument(f"cannot truncate the WAL after LSN {lsn}: it holds LSN {self.first_lsn}.."
                                      f"{self._last_lsn} only")
            dropped = self._last_lsn - lsn
            keep = [seg for seg in self._segments if seg.first_lsn <= lsn]
            keep_live = keep[-1] if keep else None  # None: every record goes, the log continues after lsn
            retired = self._segments[len(keep):]
            end, epoch = 0, 0
            if keep_live is not None:
                records, valid_bytes = scan_segment(keep_live, is_last=True, keyring=self.keyring)
                for index, (_, rec) in enumerate(records):
                    if rec.lsn == lsn:  # the cut: where the next frame starts (sealed frames are longer)
                        end = records[index + 1][0] if index + 1 < len(records) else valid_bytes
                        epoch = rec.epoch
                        break
                if end == 0:
                    raise CorruptionError(f"record LSN {lsn} not found in its WAL segment",
                                          segment=os.path.basename(keep_live.path), lsn=lsn)
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._segments = keep
            if not keep:
                self._last_lsn = lsn
            self._write_manifest()
            for seg in retired:
                os.unlink(seg.path)
            if keep_live is not None:
                fd = os.open(keep_live.path, os.O_WRONLY)
                os.ftruncate(fd, end)
                if self.fsync_enabled:
                    os.fsync(fd)
                self._fd = fd
                self._segment_bytes = self._allocated_bytes = end
                self._open_live(keep_live, holds_records=True)
            else:
                self._segment_bytes = self._allocated_bytes = self._live_start = 0
                self._sealer, self._roll_pending = None, False
            if self.fsync_enabled:
                fsync_directory(self.directory)
            self._last_lsn = lsn
            self._durable_lsn = min(self._durable_lsn, lsn)
            self._last_epoch = epoch
            return dropped

    def _preallocate(self, end: int) -> None:
        """Write zeros from the allocated end to past `end`, within the segment's size cap."""
        target = min(max(end, self._segment_bytes + self.preallocate_bytes), self.segment_bytes_max)
        position = self._allocated_bytes
        while position < target:
            position += os.pwrite(self._fd, _ZEROS[:min(len(_ZEROS), target - position)], position)
        self._allocated_bytes = max(self._allocated_bytes, position)

    def _undo_partial_write(self, exc: BaseException) -> None:
        try:
            os.ftruncate(self._fd, self._segment_bytes)
            self._allocated_bytes = self._segment_bytes
        except OSError:
            self._failed = exc

    def _seal(self) -> None:
        """Cut the live segment's zero tail and make it durable (before a roll or close)."""
        if self._allocated_bytes != self._segment_bytes:
            os.ftruncate(self._fd, self._segment_bytes)
            self._allocated_bytes = self._segment_bytes
        if self.fsync_enabled:
            os.fsync(self._fd)

    def _roll(self, first_lsn: int) -> None:
        """Seal the live segment and start a new one at `first_lsn`, listed in the manifest before any
        record goes into it. Where the new file cannot be made, the old segment stays live."""
        path = os.path.join(self.directory, segment_name(first_lsn))
        if self._fd >= 0:
            self._seal()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            sealer = self._write_header(fd)  # durable before the segment is listed: frames only follow it
            if self.fsync_enabled:
                fsync_directory(self.directory)
            self._segments.append(Segment(first_lsn, path))
            try:
                self._write_manifest()
            except BaseException:
                self._segments.pop()
                raise
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self._segment_bytes = self._allocated_bytes = self._live_start = crypto.FILE_HEADER_BYTES if sealer else 0
        self._sealer = sealer
        self._roll_pending = False

    def roll_next_append(self, bytes_min: int = 0) -> bool:
        """Have the next append start a new segment when the live one holds records and takes at least
        `bytes_min` on disk (preallocated zeros included), so that once its records are covered
        `remove_segments_before` can drop it; returns whether a roll was asked for."""
        with self._append_lock:
            if self._segment_bytes > self._live_start and self._allocated_bytes >= bytes_min:
                self._roll_pending = True
                return True
            return False

    def sync_to(self, lsn: int) -> None:
        """Return once every record up to `lsn` is on stable storage (shares fsyncs)."""
        if self._durable_lsn >= lsn:
            return
        with self._sync_lock:
            if self._durable_lsn >= lsn:
                return
            with self._append_lock:
                self._check_healthy()
                target = self._last_lsn
                fd = os.dup(self._fd)  # a concurrent segment roll may close self._fd meanwhile
            try:
                if self.fsync_enabled:
                    started = time.perf_counter()
                    _datasync(fd)
                    self.fsync_count += 1
                    if self.on_sync is not None:
                        self.on_sync(time.perf_counter() - started)
            except OSError as exc:
                self._failed = exc  # after a failed fsync the page cache state is unknown
                raise StorePoisoned(f"WAL fsync failed: {exc}") from exc
            finally:
                os.close(fd)
            self._durable_lsn = target

    def _check_healthy(self) -> None:
        if self._failed is not None:
            raise StorePoisoned(f"WAL failed earlier ({self._failed}); reopen the store") from self._failed

    # -- reading ----------------------------------------------------------------------------
    def read_from(self, lsn: int, *, until_lsn: int | None = None) -> Iterator[Record]:
        """Yield the records with LSN >= `lsn` (and <= until_lsn), in order."""
        limit = self._durable_lsn if until_lsn is None else until_lsn
        segments = list(self._segments)
        for index, seg in enumerate(segments):
            next_first = segments[index + 1].first_lsn if index + 1 < len(segments) else None
            if next_first is not None and next_first <= lsn:
                continue
            if seg.first_lsn > limit:
                break
            records, _ = scan_segment(seg, is_last=index == len(segments) - 1, keyring=self.keyring, from_lsn=lsn)
            for _, rec in records:
                if rec.lsn > limit:
                    return
                if rec.lsn >= lsn:
                    yield rec

    # -- retention --------------------------------------------------------------------------
    def remove_segments_before(self, lsn: int) -> int:
        """Delete whole segments whose records are all below `lsn`; return how many went. A live segment
        under an older key (or in plaintext, when encrypting) that `lsn` covers is sealed first, and an
        empty one under the current key begun, so that it can go too (a rotation's last step)."""
        with self._append_lock:
            if self._roll_pending and self._segments and self._last_lsn < lsn and self._failed is None:
                try:
                    self._roll(self._last_lsn + 1)
                except OSError as exc:  # the old segment stays (and its key stays needed); nothing is lost
                    log.warning("WAL: could not start a segment under the current key at a checkpoint: %s", exc)
            retired = []
            while len(self._segments) > 1 and self._segments[1].first_lsn <= lsn:
                retired.append(self._segments.pop(0))
            if not retired:
                return 0
            self._write_manifest()  # first the manifest: a crash in between leaves files open() removes
            for seg in retired:
                os.unlink(seg.path)
        if self.fsync_enabled:
            fsync_directory(self.directory)
        return len(retired)

    def start_at(self, lsn: int, epoch: int) -> None:
        """Make an empty log continue after `lsn` (after a restore whose WAL was truncated)."""
        with self._append_lock:
            if self._segments:
                first = self._segments[0]
                raise CorruptionError(f"cannot continue the log after LSN {lsn}: it still holds records up to "
                                      f"LSN {self._last_lsn}", segment=os.path.basename(first.path),
                                      lsn_range=(first.first_lsn, self._last_lsn))
            self._last_lsn = self._durable_lsn = lsn
            self._last_epoch = epoch
            self._write_manifest()

    def set_aside_all(self) -> None:
        """Move every segment into wal/quarantine/ (an operator-allowed recovery whose tables are ahead of
        the log); the log is then empty and continues after `start_at`."""
        with self._append_lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self.recovery.quarantined += set_aside(self.directory, self._segments)
            self._segments = []
            self._segment_bytes = self._allocated_bytes = self._live_start = 0
            self._sealer = None
            self._roll_pending = False
            self._write_manifest()

    def close(self) -> None:
        with self._append_lock:
            if self._fd >= 0:
                if self._failed is None:
                    self._seal()
                os.close(self._fd)
                self._fd = -1
