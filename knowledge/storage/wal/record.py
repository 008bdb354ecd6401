"""One WAL record and its on-disk frame.

Frame layout (little endian), 36-byte header then the payload:
    magic u32 | payload_bytes u32 | lsn u64 | epoch u64 | timestamp_ns u64 | crc32 u32
The CRC covers the first 32 header bytes and the payload, so a damaged length, position or
body is detected. Records never span segments. In an encrypted segment (knowledge/storage/crypto.py)
the payload is sealed (nonce | AES-256-GCM ciphertext | tag) with the header as authenticated data.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

MAGIC = 0x4C574E4B  # b"KNWL" read little endian
HEADER = struct.Struct("<IIQQQ")
CRC = struct.Struct("<I")
HEADER_BYTES = HEADER.size + CRC.size
PAYLOAD_BYTES_MAX = 1 << 30


@dataclass(frozen=True, slots=True)
class Record:
    """A committed transaction as it lies in the log; `payload` is opaque to the WAL."""

    lsn: int
    epoch: int
    timestamp_ns: int
    payload: bytes

    @property
    def frame_bytes(self) -> int:
        return HEADER_BYTES + len(self.payload)


class FrameError(Exception):
    """A frame that cannot be decoded; `torn` says whether it ends past the end of the data."""

    def __init__(self, reason: str, *, torn: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.torn = torn


def encode(record: Record) -> bytes:
    """Return the frame of `record`."""
    return encode_frame(record.lsn, record.epoch, record.timestamp_ns, record.payload)


def encode_frame(lsn: int, epoch: int, timestamp_ns: int, payload: bytes) -> bytes:
    """Return the frame of the record (lsn, epoch, timestamp_ns, payload)."""
    if len(payload) > PAYLOAD_BYTES_MAX:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {PAYLOAD_BYTES_MAX}")
    head = HEADER.pack(MAGIC, len(payload), lsn, epoch, timestamp_ns)
    return b"".join((head, CRC.pack(zlib.crc32(payload, zlib.crc32(head))), payload))


def encode_sealed_frame(lsn: int, epoch: int, timestamp_ns: int, payload: bytes,
                        seal: Callable[[bytes, bytes], bytes], overhead: int) -> bytes:
    """The frame of an encrypted segment's record: the same header, whose length counts the sealed payload
    (`seal(payload, aad)`, `overhead` bytes longer), with the header's first 32 bytes as the AAD; the CRC
    covers the header and the sealed bytes, so torn tails are found exactly as in a plaintext segment."""
    if len(payload) > PAYLOAD_BYTES_MAX - overhead:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {PAYLOAD_BYTES_MAX - overhead}")
    head = HEADER.pack(MAGIC, len(payload) + overhead, lsn, epoch, timestamp_ns)
    sealed = seal(payload, head)
    return b"".join((head, CRC.pack(zlib.crc32(sealed, zlib.crc32(head))), sealed))


def frame_aad(record: Record) -> bytes:
    """The authenticated data of a sealed frame: its header's first 32 bytes (length, LSN, epoch, time)."""
    return HEADER.pack(MAGIC, len(record.payload), record.lsn, record.epoch, record.timestamp_ns)


def decode(buffer: bytes | memoryview, offset: int) -> Record:
    """Decode the frame at `offset`; raise FrameError (torn=True when it runs past the data)."""
    view = memoryview(buffer)
    available = len(view) - offset
    if available < HEADER_BYTES:
        raise FrameError(f"{available} bytes left, a header needs {HEADER_BYTES}", torn=True)
    magic, payload_bytes, lsn, epoch, timestamp_ns = HEADER.unpack_from(view, offset)
    if magic != MAGIC:
        raise FrameError(f"bad magic {magic:#010x}", torn=False)
    if payload_bytes > PAYLOAD_BYTES_MAX:
        raise FrameError(f"payload length {payload_bytes} beyond the maximum", torn=False)
    end = offset + HEADER_BYTES + payload_bytes
    if end > len(view):
        raise FrameError(f"frame of {HEADER_BYTES + payload_bytes} bytes runs past the end", torn=True)
    (stored_crc,) = CRC.unpack_from(view, offset + HEADER.size)
    payload = view[offset + HEADER_BYTES:end]
    crc = zlib.crc32(payload, zlib.crc32(view[offset:offset + HEADER.size]))
    if crc != stored_crc:
        raise FrameError(f"CRC mismatch (stored {stored_crc:#010x}, computed {crc:#010x})", torn=False)
    return Record(lsn, epoch, timestamp_ns, bytes(payload))
