"""Index snapshot files: a body stamped with the LSN it reflects, written atomically, checked on read.

Layout: magic `KSNP` | header_bytes u32 | header JSON {"version", "lsn", "bytes", "crc", ...} | body.
The CRC32 covers the body; a file that fails any check reads as ValueError, so the caller rebuilds.
Written with a keyring, that whole layout is sealed (AES-256-GCM, knowledge/storage/crypto.py: the
plaintext file header of an encrypted file, with key id, key check value and salt, then 1 MiB chunks):
a sealed file whose GCM tag fails reads as ValueError too (rebuilt from the tables), one under a key
the keyring lacks raises EncryptionKeyMissing / EncryptionKeyWrong.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from typing import Any

from knowledge.errors import CorruptionError, EncryptionKeyMissing
from knowledge.storage import crypto

MAGIC = b"KSNP"
VERSION = 1
_LENGTH = struct.Struct("<I")
_KEYRINGS: dict[str, crypto.Keyring] = {}  # snapshot directory -> the keyring of the store that owns it


def use_keyring(directory: str, keyring: crypto.Keyring | None) -> None:
    """Seal every snapshot written to (and open every one read from) `directory` with `keyring`; None
    stops that. The engine sets it for its store's snapshots/ at open, so index code saves as before."""
    key = os.path.realpath(directory)
    if keyring is None:
        _KEYRINGS.pop(key, None)
    else:
        _KEYRINGS[key] = keyring


def _keyring_for(path: str, keyring: crypto.Keyring | None) -> crypto.Keyring | None:
    return keyring if keyring is not None else _KEYRINGS.get(os.path.realpath(os.path.dirname(path) or "."))


def write_snapshot(path: str, lsn: int, body: bytes, *, keyring: crypto.Keyring | None = None, **meta: Any) -> None:
    """Write `body` stamped with `lsn` (and `meta`) to `path` atomically and durably (sealed under the
    current key of `keyring`, or of the one `use_keyring` set for the file's directory)."""
    header = json.dumps({"version": VERSION, "lsn": lsn, "bytes": len(body), "crc": zlib.crc32(body), **meta},
                        separators=(",", ":")).encode()
    parts = [MAGIC + _LENGTH.pack(len(header)) + header, body]
    keyring = _keyring_for(path, keyring)
    if keyring is not None:  # sealed in 1 MiB chunks: any size (one AES-GCM call takes at most 2 GiB)
        parts = [crypto.seal_bytes(b"".join(parts), keyring, crypto.KIND_SNAPSHOT)]
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        for part in parts:
            f.write(part)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read_snapshot(path: str, keyring: crypto.Keyring | None = None) -> tuple[int, bytes, dict[str, Any]]:
    """(lsn, body, header) of the snapshot at `path`; OSError when unreadable, ValueError when damaged
    (or, sealed, when its GCM tag fails), EncryptionKeyMissing / EncryptionKeyWrong when its key is not held."""
    with open(path, "rb") as f:
        data = f.read()
    if crypto.is_encrypted(data):
        data = _unseal(path, data, _keyring_for(path, keyring))
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


def _unseal(path: str, data: bytes, keyring: crypto.Keyring | None) -> bytes:
    try:
        header = crypto.parse_header(data, path)
    except CorruptionError as exc:
        raise ValueError(str(exc)) from None
    if keyring is None:
        raise EncryptionKeyMissing(f"index snapshot {path} is encrypted (key id {header.key_id!r}) and no "
                                   f"encryption key was given", path=path, key_id=header.key_id)
    keyring.require(header, path)  # a key not held raises; damage below reads as ValueError (a rebuild)
    try:
        return crypto.open_bytes(data, keyring, path)
    except CorruptionError as exc:  # rebuilt from the tables, with the warning naming the file
        raise ValueError(str(exc)) from None
