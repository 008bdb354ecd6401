"""WalTail: follow a WAL directory that another process (or thread) appends to, reading only new bytes.

A reader process (`knowledge serve`'s local readers) holds a copy of the store and applies the primary's
records as they become durable: each `read(until_lsn)` returns the records after the last one returned, up
to an LSN the writer has made durable, reading only the bytes appended since the previous call.

Guarantees:
- Records come in LSN order, each once, payloads in plaintext (encrypted segments are opened with the
  keyring), CRC and LSN order checked exactly as `scan_segment` does.
- Bytes past `until_lsn` are never judged: a half-written frame or the live segment's preallocated zeros
  there are not an error.
- A segment removed by retention while it is being read stays readable (its descriptor is held); a record
  that is in no segment any more when it is needed raises WalTailGone (copy the store again).
- A record up to `until_lsn` that is damaged, out of order or missing raises CorruptionError naming the
  segment, offset and LSN.

A WalTail is used by one thread at a time.
"""

from __future__ import annotations

import os

from knowledge.errors import (
    CorruptionError,
    InvalidArgument,
    InvariantViolation,
    KnowledgeError,
    StoreClosed,
    WalTailGone,
)
from knowledge.storage import crypto
from knowledge.storage.wal import record as frames
from knowledge.storage.wal.record import Record
from knowledge.storage.wal.scan import Segment, list_segments, segment_sealer

__all__ = ["WalTail"]

READ_BYTES_MIN = 16 << 10  # the first read of a call: one group commit's frames, usually
READ_BYTES_MAX = 1 << 20  # reads grow to this while a call catches up
_OPEN_TRIES = 8  # a listed segment can vanish (retention) before it is opened: list again this often


class WalTail:
    """Reads the records of a WAL directory that another process (or thread) is appending to, in LSN order,
    from `after_lsn + 1` onward, incrementally: each call reads only the bytes appended since the last."""

    def __init__(self, directory: str, after_lsn: int, *, keyring: crypto.Keyring | None = None) -> None:
        if after_lsn < 0:
            raise InvalidArgument(f"after_lsn must be >= 0, got {after_lsn}")
        if not os.path.isdir(directory):
            raise InvalidArgument(f"{directory!r} is not a WAL directory")
        self.directory = directory
        self.keyring = keyring
        self._last = after_lsn
        self._segment: Segment | None = None
        self._path = ""  # the segment's path
        self._fd = -1
        self._start: int | None = None  # where the segment's frames begin (None: its header is not read yet)
        self._sealer: crypto.Sealer | None = None
        self._buffer = bytearray()  # bytes of the segment from file offset _buffer_at on
        self._buffer_at = 0
        self._position = 0  # index in _buffer of the next frame
        self._expected = 0  # the LSN of the next frame
        self._fresh_at = 0  # file offset from which the buffer's bytes were read during this call
        self._read_bytes = READ_BYTES_MIN
        self._closed = False
        self._locate(after_lsn + 1, needed=False)

    @property
    def last_lsn(self) -> int:
        """The LSN of the last record returned (`after_lsn` before the first)."""
        return self._last

    @property
    def segment(self) -> Segment | None:
        """The segment being read (None before the directory holds one)."""
        return self._segment

    def read(self, until_lsn: int, records_max: int = 10_000) -> list[Record]:
        """The next records, LSN last_lsn+1 .. until_lsn (at most records_max of them), payloads in plaintext.
        `until_lsn` is an LSN the writer has made durable, so every record up to it is complete on disk.
        Raises WalTailGone when a record it needs is no longer in any segment (retention removed it: the
        caller must re-copy the store), CorruptionError on damage before until_lsn. A call that meets such a
        failure after some records returns those; the next call raises it (last_lsn stays before it)."""
        if self._closed:
            raise StoreClosed(f"the WAL tail of {self.directory} is closed")
        out: list[Record] = []
        if until_lsn <= self._last or records_max <= 0:
            return out
        self._fresh_at = self._buffer_at + len(self._buffer)
        self._read_bytes = READ_BYTES_MIN
        try:
            while self._last < until_lsn and len(out) < records_max:
                if self._fd < 0:
                    self._locate(self._last + 1, needed=True)
                if self._start is None:
                    self._begin()
                rec = self._next_frame()
                if rec is None:  # this segment holds no more records: the next one is in a newer segment
                    self._next_segment()
                    continue
                frame_bytes = rec.frame_bytes
                if rec.lsn > self._last:  # (below the starting LSN: checked, not returned)
                    if self._sealer is not None:
                        plain = self._sealer.open(rec.payload, frames.frame_aad(rec), self._path,
                                                  self._buffer_at + self._position, rec.lsn)
                        rec = Record(rec.lsn, rec.epoch, rec.timestamp_ns, plain)
                    out.append(rec)
                    self._last = rec.lsn
                self._position += frame_bytes
                self._expected += 1
        except (KnowledgeError, OSError):
            if not out:
                raise
            # the position is still at the failing record: the next call meets the failure again
        return out

    def close(self) -> None:
        """Release the open segment; the tail cannot be read after."""
        self._closed = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._buffer = bytearray()

    def __enter__(self) -> WalTail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)

    # -- segments ---------------------------------------------------------------------------
    def _gone(self, lsn: int) -> WalTailGone:
        return WalTailGone(f"WAL record LSN {lsn} is no longer in any segment of {self.directory} (retention "
                           f"removed it): copy the store again and follow from the copy's LSN",
                           lsn=lsn, directory=self.directory)

    def _locate(self, lsn: int, *, needed: bool) -> None:
        """Open the segment that holds (or will hold) record `lsn`. With nothing listed yet, wait for one
        unless the record is `needed` now; WalTailGone when every segment listed starts after it."""
        for _ in range(_OPEN_TRIES):
            segments = list_segments(self.directory)
            holding = [seg for seg in segments if seg.first_lsn <= lsn]
            if not holding:
                if segments or needed:
                    raise self._gone(lsn)
                return
            try:
                self._open(holding[-1])
                return
            except FileNotFoundError:
                continue  # removed since it was listed
        raise self._gone(lsn)

    def _open(self, segment: Segment) -> None:
        """Make `segment` the one read, from its first frame (FileNotFoundError when it is gone)."""
        fd = os.open(segment.path, os.O_RDONLY)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self._segment, self._path = segment, segment.path
        self._start, self._sealer = None, None
        self._buffer = bytearray()
        self._buffer_at = self._position = self._fresh_at = 0
        self._expected = segment.first_lsn

    def _begin(self) -> None:
        """Read the segment's file header (once a record in it is needed, so the header is durable)."""
        prefix = os.pread(self._fd, crypto.FILE_HEADER_BYTES, 0)
        start, sealer = segment_sealer(prefix, self._path, is_last=False, keyring=self.keyring)
        if start is None:
            raise self._damage("the segment's file header is incomplete")
        self._start, self._sealer = start, sealer
        self._buffer = bytearray()
        self._buffer_at = self._fresh_at = start
        self._position = 0

    def _next_segment(self) -> None:
        """Move on to the segment that starts at the next LSN (the current one is read to its end)."""
        current, lsn = self._segment, self._expected
        if current is None:
            raise InvariantViolation("WalTail: no segment is open")
        segments = list_segments(self.directory)
        newer = [seg for seg in segments if seg.first_lsn > current.first_lsn]
        if newer and newer[0].first_lsn == lsn:
            try:
                self._open(newer[0])
            except FileNotFoundError:
                raise self._gone(lsn) from None
            return
        if current not in segments:
            raise self._gone(lsn)  # retention removed the segment read and those after it
        following = f"the next segment starts at LSN {newer[0].first_lsn}" if newer else "no segment follows it"
        raise CorruptionError(f"WAL record LSN {lsn} is durable but not in the log: {os.path.basename(current.path)} "
                              f"ends before it and {following} (damage, or until_lsn past what was written)",
                              segment=os.path.basename(current.path), offset=self._buffer_at + self._position,
                              lsn=lsn)

    # -- frames -----------------------------------------------------------------------------
    def _next_frame(self) -> Record | None:
        """The frame at the position (CRC and LSN checked); None when the segment ends there."""
        while True:
            torn, reason = False, ""
            try:
                rec = frames.decode(self._buffer, self._position)
            except frames.FrameError as exc:
                torn, reason = exc.torn, exc.reason
                rec = None
            # out of the except block: the exception's frame no longer holds a view of the buffer
            if rec is not None:
                if rec.lsn != self._expected:
                    raise self._damage(f"record with LSN {rec.lsn} where {self._expected} was expected")
                return rec
            if torn and self._fill():
                continue
            offset = self._buffer_at + self._position
            if offset < self._fresh_at:  # read by an earlier call: zeros or a frame since written over
                del self._buffer[self._position:]
                self._fresh_at = offset
                continue
            if torn and self._position == len(self._buffer):
                return None
            if not self._buffer[self._position:self._position + frames.HEADER_BYTES].strip(b"\x00"):
                raise self._damage(f"WAL record LSN {self._expected} is durable but not in the log: zeros where it "
                                   f"belongs (until_lsn past what was written, or its write was lost)")
            raise self._damage(f"damaged WAL record: {reason}")

    def _fill(self) -> bool:
        """Read the bytes after the buffer (at least the rest of the frame begun at the position); False at
        the end of the file."""
        if self._position:
            del self._buffer[:self._position]
            self._buffer_at += self._position
            self._position = 0
        wanted = self._read_bytes
        if len(self._buffer) >= frames.HEADER.size:
            _, payload_bytes, *_ = frames.HEADER.unpack_from(self._buffer, 0)
            if payload_bytes <= frames.PAYLOAD_BYTES_MAX:
                wanted = max(wanted, frames.HEADER_BYTES + payload_bytes - len(self._buffer))
        at = self._buffer_at + len(self._buffer)
        if wanted > READ_BYTES_MAX:  # a large frame, or a damaged length: no more than the file holds
            wanted = max(0, min(wanted, os.fstat(self._fd).st_size - at))
        data = os.pread(self._fd, wanted, at) if wanted else b""
        self._read_bytes = min(self._read_bytes * 2, READ_BYTES_MAX)
        if not data:
            return False
        self._buffer += data
        return True

    def _damage(self, message: str) -> CorruptionError:
        return CorruptionError(message, segment=os.path.basename(self._path),
                               offset=self._buffer_at + self._position, lsn=self._expected)
