"""WriteAheadLog: append, group-commit fsync, recovery scan and reads over segment files.

Guarantees:
- `append` assigns the next LSN and writes the frame; it is durable once `sync_to(lsn)` returns.
- `sync_to` is group commit: concurrent callers share one fsync; a caller whose record was
  covered by someone else's fsync returns without one.
- The live segment is preallocated with written zeros ahead of the appends, so a commit's sync is
  an fdatasync that moves only data (no block allocation, no size change to journal). Sealed
  segments and a cleanly closed log hold no zero tail; after a crash, recovery truncates it.
- `open` scans every segment: a torn record at the very tail is truncated; any other damage
  raises CorruptionError naming the segment and byte offset, and nothing is modified.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from knowledge.errors import CorruptionError, StorePoisoned, invariant
from knowledge.storage.wal import record as frames
from knowledge.storage.wal.record import Record
from knowledge.storage.wal.segments import parse_segment_name, segment_name

SEGMENT_BYTES_MAX = 64 << 20
PREALLOCATE_BYTES = 4 << 20  # zeros written ahead of small appends
PREALLOCATE_FRAME_BYTES_MAX = 256 << 10  # larger frames extend the file themselves (no double write)
_ZEROS = bytes(1 << 20)
_datasync = getattr(os, "fdatasync", os.fsync)  # fdatasync also flushes a changed file size


@dataclass(frozen=True, slots=True)
class Segment:
    first_lsn: int
    path: str


def fsync_directory(path: str) -> None:
    """Make a directory's entries (created, renamed or removed files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_segments(directory: str) -> list[Segment]:
    """The segments in `directory`, oldest first."""
    found = []
    for name in os.listdir(directory):
        first = parse_segment_name(name)
        if first is not None:
            found.append(Segment(first, os.path.join(directory, name)))
    return sorted(found, key=lambda s: s.first_lsn)


def scan_segment(segment: Segment, *, is_last: bool) -> tuple[list[tuple[int, Record]], int]:
    """Decode a segment; return [(offset, record)] and the byte length of its valid prefix.

    Damage in the last segment that reaches the end of the file is a torn tail (the valid prefix
    is returned); any other damage raises CorruptionError.
    """
    with open(segment.path, "rb") as f:
        data = f.read()
    out: list[tuple[int, Record]] = []
    offset = 0
    expected = segment.first_lsn
    name = os.path.basename(segment.path)
    while offset < len(data):
        try:
            rec = frames.decode(data, offset)
        except frames.FrameError as exc:
            if is_last and _is_tail_damage(data, offset, exc):
                return out, offset
            raise CorruptionError(f"damaged WAL record: {exc.reason}", segment=name, offset=offset) from exc
        if rec.lsn != expected:
            raise CorruptionError(f"LSN {rec.lsn} where {expected} was expected", segment=name, offset=offset)
        out.append((offset, rec))
        offset += rec.frame_bytes
        expected += 1
    return out, offset


def _is_tail_damage(data: bytes, offset: int, exc: frames.FrameError) -> bool:
    """True when the damage at `offset` can only be an interrupted final append.

    The damaged frame's own length cannot be trusted (a flipped length bit makes any frame look
    torn), so damage counts as a torn tail only when no intact frame follows it anywhere.
    """
    if _intact_frame_after(data, offset):
        return False
    if exc.torn:
        return True
    rest = data[offset:]
    if not rest.strip(b"\x00"):
        return True  # a file extended with zeros whose data never reached the disk
    if len(rest) >= frames.HEADER.size:
        _, payload_bytes, *_ = frames.HEADER.unpack_from(rest, 0)
        # the last frame in the file, or the last before the preallocated zeros
        return not rest[frames.HEADER_BYTES + payload_bytes:].strip(b"\x00")
    return False


def _intact_frame_after(data: bytes, offset: int) -> bool:
    """Whether a frame with a valid CRC starts anywhere after `offset`."""
    magic = frames.HEADER.pack(frames.MAGIC, 0, 0, 0, 0)[:4]
    position = data.find(magic, offset + 1)
    while position >= 0:
        try:
            frames.decode(data, position)
            return True
        except frames.FrameError:
            position = data.find(magic, position + 1)
    return False


class WriteAheadLog:
    """The log in one directory. Thread-safe: appends serialise, syncs are shared."""

    def __init__(self, directory: str, *, fsync: bool = True, segment_bytes_max: int = SEGMENT_BYTES_MAX,
                 preallocate_bytes: int = PREALLOCATE_BYTES) -> None:
        invariant(segment_bytes_max > 0 and preallocate_bytes >= 0, "WAL sizes must be positive")
        self.directory = directory
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
        os.makedirs(directory, exist_ok=True)
        self._recover()

    # -- recovery ---------------------------------------------------------------------------
    def _recover(self) -> None:
        self._segments = list_segments(self.directory)
        for index, seg in enumerate(self._segments):
            is_last = index == len(self._segments) - 1
            records, valid_bytes = scan_segment(seg, is_last=is_last)
            if records:
                invariant(self._last_lsn == 0 or records[0][1].lsn == self._last_lsn + 1, "segment gap")
                self._last_lsn = records[-1][1].lsn
                self._last_epoch = records[-1][1].epoch
            elif not is_last:
                raise CorruptionError("empty WAL segment before the tail",
                                      segment=os.path.basename(seg.path), offset=0)
            if is_last:
                if os.path.getsize(seg.path) != valid_bytes:
                    with open(seg.path, "r+b") as f:
                        f.truncate(valid_bytes)
                        os.fsync(f.fileno())
                self._segment_bytes = self._allocated_bytes = valid_bytes
        if self._segments:
            invariant(self._segments[0].first_lsn <= self._last_lsn + 1, "first segment starts after tail")
            self._fd = os.open(self._segments[-1].path, os.O_WRONLY)
        self._durable_lsn = self._last_lsn

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
    def first_lsn(self) -> int:
        """The oldest LSN still held (1 for an empty log)."""
        return self._segments[0].first_lsn if self._segments else self._last_lsn + 1

    # -- writing ----------------------------------------------------------------------------
    def append(self, payload: bytes, epoch: int) -> int:
        """Write one record with the next LSN and return that LSN (not yet durable)."""
        with self._append_lock:
            self._check_healthy()
            if epoch < self._last_epoch:
                invariant(False, f"epoch went back from {self._last_epoch} to {epoch}")
            lsn = self._last_lsn + 1
            frame = frames.encode_frame(lsn, epoch, time.time_ns(), payload)
            if self._fd < 0 or self._segment_bytes + len(frame) > self.segment_bytes_max and self._segment_bytes:
                self._roll(lsn)
            end = self._segment_bytes + len(frame)
            try:
                if self.preallocate_bytes and end > self._allocated_bytes and len(frame) <= PREALLOCATE_FRAME_BYTES_MAX:
                    self._preallocate(end)
                written = os.pwrite(self._fd, frame, self._segment_bytes)
                invariant(written == len(frame), "short WAL write")
            except BaseException as exc:
                self._undo_partial_write(exc)
                raise
            self._segment_bytes = end
            self._allocated_bytes = max(self._allocated_bytes, end)
            self._last_lsn = lsn
            self._last_epoch = epoch
            return lsn

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
        if self._fd >= 0:
            self._seal()
            os.close(self._fd)
        path = os.path.join(self.directory, segment_name(first_lsn))
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        if self.fsync_enabled:
            fsync_directory(self.directory)
        self._segments.append(Segment(first_lsn, path))
        self._segment_bytes = self._allocated_bytes = 0

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
                    _datasync(fd)
                    self.fsync_count += 1
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
            records, _ = scan_segment(seg, is_last=index == len(segments) - 1)
            for _, rec in records:
                if rec.lsn > limit:
                    return
                if rec.lsn >= lsn:
                    yield rec

    # -- retention --------------------------------------------------------------------------
    def remove_segments_before(self, lsn: int) -> int:
        """Delete whole segments whose records are all below `lsn`; return how many went."""
        removed = 0
        with self._append_lock:
            while len(self._segments) > 1 and self._segments[1].first_lsn <= lsn:
                os.unlink(self._segments.pop(0).path)
                removed += 1
        if removed and self.fsync_enabled:
            fsync_directory(self.directory)
        return removed

    def start_at(self, lsn: int, epoch: int) -> None:
        """Make an empty log continue after `lsn` (after a restore whose WAL was truncated)."""
        with self._append_lock:
            invariant(not self._segments, "start_at on a non-empty log")
            self._last_lsn = self._durable_lsn = lsn
            self._last_epoch = epoch

    def close(self) -> None:
        with self._append_lock:
            if self._fd >= 0:
                if self._failed is None:
                    self._seal()
                os.close(self._fd)
                self._fd = -1
