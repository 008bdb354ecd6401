"""Index snapshot files: a body stamped with the LSN it reflects, written atomically, checked on read.

Layout: magic `KSNP` | header_bytes u32 | header JSON {"version", "lsn", "bytes", "crc", ...} | body.
The CRC32 covers the body; a file that fails any check reads as ValueError, so the caller rebuilds.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from typing import Any

MAGIC = b"KSNP"
VERSION = 1
_LENGTH = struct.Struct("<I")


def write_snapshot(path: str, lsn: int, body: bytes, **meta: Any) -> None:
    """Write `body` stamped with `lsn` (and `meta`) to `path` atomically and durably."""
    header = json.dumps({"version": VERSION, "lsn": lsn, "bytes": len(body), "crc": zlib.crc32(body), **meta},
                        separators=(",", ":")).encode()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(MAGIC + _LENGTH.pack(len(header)) + header)
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read_snapshot(path: str) -> tuple[int, bytes, dict[str, Any]]:
    """(lsn, body, header) of the snapshot at `path`; OSError when unreadable, ValueError when damaged."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != MAGIC or len(data) < 8:
        raise ValueError(f"snapshot {path} has no snapshot header")
    (size,) = _LENGTH.unpack_from(data, 4)
    try:
        header = json.loads(data[8:8 + size])
        body = data[8 + size:]
        if header["version"] != VERSION or len(body) != header["bytes"] or zlib.crc32(body) != header["crc"]:
            raise ValueError("length or CRC mismatch")
        return int(header["lsn"]), body, header
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"snapshot {path} is damaged: {exc}") from None
