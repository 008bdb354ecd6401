"""Reading segment files: listing them in LSN order and decoding their frames, telling a torn tail
(an interrupted final append) from damage before it."""

from __future__ import annotations

import os
from dataclasses import dataclass

from knowledge.errors import CorruptionError, EncryptionKeyMissing
from knowledge.storage import crypto
from knowledge.storage.wal import record as frames
from knowledge.storage.wal.record import Record
from knowledge.storage.wal.segments import parse_segment_name


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


def segment_sealer(data: bytes, path: str, *, is_last: bool,
                   keyring: crypto.Keyring | None) -> tuple[int | None, crypto.Sealer | None]:
    """Where a segment's frames start and, for an encrypted one, its sealer (key checked: a missing or
    wrong key raises EncryptionKeyMissing / EncryptionKeyWrong naming the file). (None, None): the last
    segment's header was being written when the process died, so it holds no record."""
    if not crypto.is_encrypted(data):
        return 0, None
    try:
        header = crypto.parse_header(data, path)
    except CorruptionError:
        if is_last and not data[crypto.FILE_HEADER_BYTES:].strip(b"\x00"):
            return None, None  # frames follow only once the header is durable (WriteAheadLog._roll)
        raise
    if keyring is None:
        raise EncryptionKeyMissing(f"WAL segment {path} is encrypted (key id {header.key_id!r}) and no encryption "
                                   f"key was given: open the store with StoreConfig(encryption_key=...)",
                                   path=path, key_id=header.key_id)
    return crypto.FILE_HEADER_BYTES, keyring.sealer(header, path)


def scan_segment(segment: Segment, *, is_last: bool, keyring: crypto.Keyring | None = None,
                 from_lsn: int = 0) -> tuple[list[tuple[int, Record]], int]:
    """Decode a segment; return [(offset, record)] (plaintext payloads) and the byte length of its valid
    prefix.

    Damage in the last segment that reaches the end of the file is a torn tail (the valid prefix
    is returned); any other damage raises CorruptionError. In an encrypted segment a frame whose CRC
    holds but whose GCM tag does not (altered, or a CRC recomputed over altered bytes) is CorruptionError
    wherever it lies: a torn write cannot produce it. Records below `from_lsn` are checked (CRC, order)
    but left out, and not decrypted (for a reader that starts at `from_lsn`).
    """
    with open(segment.path, "rb") as f:
        data = f.read()
    start, sealer = segment_sealer(data, segment.path, is_last=is_last, keyring=keyring)
    if start is None:
        return [], 0
    out: list[tuple[int, Record]] = []
    offset = start
    expected = segment.first_lsn
    name = os.path.basename(segment.path)
    while offset < len(data):
        try:
            rec = frames.decode(data, offset)
        except frames.FrameError as exc:
            if is_last and _is_tail_damage(data, offset, exc):
                return out, offset
            raise CorruptionError(f"damaged WAL record: {exc.reason}", segment=name, offset=offset,
                                  lsn=expected) from exc
        if rec.lsn != expected:
            raise CorruptionError(f"record with LSN {rec.lsn} where {expected} was expected", segment=name,
                                  offset=offset, lsn=expected)
        frame_bytes = rec.frame_bytes
        if rec.lsn < from_lsn:
            offset += frame_bytes
            expected += 1
            continue
        if sealer is not None:
            plain = sealer.open(rec.payload, frames.frame_aad(rec), segment.path, offset, rec.lsn)
            rec = Record(rec.lsn, rec.epoch, rec.timestamp_ns, plain)
        out.append((offset, rec))
        offset += frame_bytes
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
