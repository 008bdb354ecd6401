"""Encryption at rest: the keyring a store is opened with, and AES-256-GCM over its files.

Every encrypted file (a WAL segment, an index snapshot, a backup's table file) names the key it is
under in a plaintext header: the key id, a check value of the key (an HMAC, so a wrong key is told
apart from a damaged file) and a random per-file salt. The salt derives the file's own AES-256 key
from the store key (HKDF-SHA256), and each record or chunk in the file has a fresh random 96-bit
nonce, so appends stream and nothing is ever encrypted twice under one (key, nonce).

File header (little endian, 68 bytes):
    magic b"KNEC" | version u8 | kind u8 | key_id_bytes u8 | pad | key_id 32s | check 8s | salt 16s | crc32 u32

This module sits in the base layer (tests/test_layers.py): it imports only knowledge.errors and the
`cryptography` package, so the index layer's snapshot files can use it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from knowledge.errors import CorruptionError, EncryptionKeyMissing, EncryptionKeyWrong, InvalidArgument

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
SEAL_OVERHEAD = NONCE_BYTES + TAG_BYTES  # bytes a sealed payload adds to its plaintext
SALT_BYTES = 16
MAGIC = b"KNEC"
VERSION = 1
KIND_WAL, KIND_SNAPSHOT, KIND_BACKUP = 1, 2, 3
_HEADER = struct.Struct("<4sBBBx32s8s16s")
_CRC = struct.Struct("<I")
FILE_HEADER_BYTES = _HEADER.size + _CRC.size
_KEY_ID = re.compile(r"[A-Za-z0-9._:-]{1,32}")
KeyProvider = Callable[[str], Any]  # key id -> the key (bytes or hex/base64 text), or None when unknown


def _key_bytes(value: Any, what: str) -> bytes:
    """A 32-byte key from bytes, 64 hex characters or base64 text; InvalidArgument otherwise."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if len(raw) == KEY_BYTES:
            return raw
        try:  # the bytes of a key file: hex or base64 text
            value = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise InvalidArgument(f"{what} must be {KEY_BYTES} bytes, got {len(raw)}") from None
    if isinstance(value, str):
        text = value.strip()
        try:
            raw = bytes.fromhex(text) if len(text) == 2 * KEY_BYTES else base64.b64decode(text, validate=True)
        except (ValueError, binascii.Error):
            raw = b""
        if len(raw) == KEY_BYTES:
            return raw
        raise InvalidArgument(f"{what} must be {KEY_BYTES} bytes, {2 * KEY_BYTES} hex characters or base64 of "
                              f"{KEY_BYTES} bytes")
    raise InvalidArgument(f"{what} must be bytes or str, got {type(value).__name__}")


def key_id_of(key: bytes) -> str:
    """The id a key gets when none is given: a fingerprint (HMAC) that says nothing about the key."""
    return "k-" + hmac.new(key, b"knowledge key id", hashlib.sha256).hexdigest()[:16]


def _check_value(key: bytes) -> bytes:
    return hmac.new(key, b"knowledge key check", hashlib.sha256).digest()[:8]


def _valid_key_id(key_id: Any, what: str) -> str:
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise InvalidArgument(f"{what} must be 1-32 characters of letters, digits and . _ : -, got {key_id!r}")
    return key_id


def generate_key() -> bytes:
    """A new random 32-byte key (store it somewhere safe: without it the store cannot be read)."""
    return os.urandom(KEY_BYTES)


@dataclass(frozen=True, slots=True)
class FileHeader:
    """The plaintext header of an encrypted file: which key, its check value, the file's salt."""

    kind: int
    key_id: str
    check: bytes
    salt: bytes

    def encode(self) -> bytes:
        key_id = self.key_id.encode("ascii")
        head = _HEADER.pack(MAGIC, VERSION, self.kind, len(key_id), key_id, self.check, self.salt)
        return head + _CRC.pack(zlib.crc32(head))


def is_encrypted(prefix: bytes) -> bool:
    """Whether a file starting with `prefix` is one of ours (its first 4 bytes are the magic)."""
    return prefix[:4] == MAGIC


def parse_header(data: bytes | memoryview, path: str) -> FileHeader:
    """The header at the start of `data`; CorruptionError naming `path` when it is damaged."""
    name = os.path.basename(path)
    if len(data) < FILE_HEADER_BYTES:
        raise CorruptionError(f"encrypted file {path} ends inside its {FILE_HEADER_BYTES}-byte header",
                              segment=name, offset=0)
    magic, version, kind, id_bytes, key_id, check, salt = _HEADER.unpack_from(data, 0)
    (crc,) = _CRC.unpack_from(data, _HEADER.size)
    if magic != MAGIC or crc != zlib.crc32(bytes(data[:_HEADER.size])) or not 0 < id_bytes <= 32:
        raise CorruptionError(f"encrypted file {path} has a damaged header", segment=name, offset=0)
    if version != VERSION:
        raise CorruptionError(f"encrypted file {path} has format version {version}, not {VERSION}",
                              segment=name, offset=0)
    return FileHeader(kind, key_id[:id_bytes].decode("ascii", "replace"), check, salt)


def read_header(path: str) -> FileHeader | None:
    """The header of the file at `path`, or None when it is not encrypted (or holds no complete header)."""
    with open(path, "rb") as f:
        data = f.read(FILE_HEADER_BYTES)
    if not is_encrypted(data) or len(data) < FILE_HEADER_BYTES:
        return None
    return parse_header(data, path)


class Sealer:
    """AES-256-GCM under one file's key: seal and open payloads, each with its own random nonce."""

    __slots__ = ("_aead", "header")

    def __init__(self, key: bytes, header: FileHeader) -> None:
        self.header = header
        derived = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=header.salt,
                       info=b"knowledge file key v1").derive(key)
        self._aead = AESGCM(derived)

    def seal(self, plaintext: bytes | memoryview, aad: bytes) -> bytes:
        """nonce | ciphertext | tag of `plaintext`, with `aad` authenticated alongside."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, bytes(plaintext), aad)

    def open(self, sealed: bytes | memoryview, aad: bytes, path: str, offset: int | None = None,
             lsn: int | None = None) -> bytes:
        """The plaintext of `sealed`; CorruptionError naming `path` when its GCM tag does not verify."""
        view = memoryview(sealed)
        if len(view) < SEAL_OVERHEAD:
            raise CorruptionError(f"encrypted data in {path} is shorter than its nonce and tag",
                                  segment=os.path.basename(path), offset=offset, lsn=lsn)
        try:
            return self._aead.decrypt(bytes(view[:NONCE_BYTES]), bytes(view[NONCE_BYTES:]), aad)
        except InvalidTag:
            raise CorruptionError(f"encrypted data in {path} fails its AES-GCM authentication tag (the file was "
                                  f"altered or damaged)", segment=os.path.basename(path), offset=offset,
                                  lsn=lsn) from None


class Keyring:
    """The keys a store is opened with: the current one (every new file) and older ones by id (reading
    files written before a rotation). A provider (KMS-style callback) is asked for ids it does not hold."""

    def __init__(self, current: bytes, current_id: str | None = None, older: Mapping[str, bytes] | None = None,
                 provider: KeyProvider | None = None) -> None:
        self.current_key = _key_bytes(current, "encryption key")
        self.current_id = _valid_key_id(current_id or key_id_of(self.current_key), "encryption key id")
        self._keys: dict[str, bytes] = {self.current_id: self.current_key}
        for key_id, key in (older or {}).items():
            self._keys.setdefault(_valid_key_id(key_id, "encryption key id"), _key_bytes(key, f"key {key_id!r}"))
        self._provider = provider
        self._sealers: dict[tuple[str, bytes], Sealer] = {}

    @property
    def key_ids(self) -> list[str]:
        """The ids held now (the current one first)."""
        return list(self._keys)

    def new_header(self, kind: int) -> FileHeader:
        """A header for a new file of `kind` under the current key, with a fresh salt."""
        return FileHeader(kind, self.current_id, _check_value(self.current_key), os.urandom(SALT_BYTES))

    def _key(self, header: FileHeader, path: str) -> bytes:
        key = self._keys.get(header.key_id)
        if key is None and self._provider is not None:
            supplied = self._provider(header.key_id)
            if supplied is not None:
                key = self._keys[header.key_id] = _key_bytes(supplied, f"the key the provider gave for "
                                                                       f"{header.key_id!r}")
        if key is None:
            raise EncryptionKeyMissing(f"{path} is encrypted under key id {header.key_id!r}, which this store was "
                                       f"not given (it holds {self.key_ids}); pass that key (as the current key or "
                                       f"in encryption_old_keys)", path=path, key_id=header.key_id)
        if not hmac.compare_digest(_check_value(key), header.check):
            raise EncryptionKeyWrong(f"{path} is encrypted under key id {header.key_id!r}, and the key given for "
                                     f"that id is not the one it was written with", path=path,
                                     key_id=header.key_id)
        return key

    def require(self, header: FileHeader, path: str) -> None:
        """Raise EncryptionKeyMissing / EncryptionKeyWrong unless the key of `header` is held."""
        self._key(header, path)

    def sealer(self, header: FileHeader, path: str) -> Sealer:
        """The sealer for the file whose header is `header` (its key checked first)."""
        cached = self._sealers.get((header.key_id, header.salt))
        if cached is None:
            cached = Sealer(self._key(header, path), header)
            if len(self._sealers) > 1024:
                self._sealers.clear()
            self._sealers[(header.key_id, header.salt)] = cached
        return cached

    def new_sealer(self, kind: int) -> Sealer:
        """The sealer of a new file of `kind` under the current key (its header is `sealer.header`)."""
        header = self.new_header(kind)
        return self.sealer(header, "(new file)")


def keyring_from(key: Any = None, *, key_id: str | None = None, key_file: str | None = None,
                 provider: KeyProvider | None = None, older: Mapping[str, Any] | Iterable[Any] = ()
                 ) -> Keyring | None:
    """The keyring that these settings describe (StoreConfig's encryption_* fields), or None when no
    current key is given. InvalidArgument for two sources of the current key or a malformed key."""
    sources = [name for name, value in (("encryption_key", key), ("encryption_key_file", key_file),
                                        ("encryption_key_provider", provider)) if value is not None]
    if len(sources) > 1 and sources != ["encryption_key", "encryption_key_provider"]:
        raise InvalidArgument(f"give the current encryption key once, not by {' and '.join(sources)}")
    older_keys = _older(older)
    if not sources:
        if older_keys or key_id is not None:
            raise InvalidArgument("encryption_old_keys / encryption_key_id given without a current encryption key")
        return None
    if key_file is not None:
        key, file_id, file_older = read_key_file(key_file)
        if file_id is not None:
            if key_id is not None and key_id != file_id:
                raise InvalidArgument(f"encryption_key_id {key_id!r} differs from the current key's id {file_id!r} "
                                      f"in {key_file}")
            key_id = file_id
        older_keys = {**file_older, **older_keys}
    elif key is None:
        if key_id is None:
            raise InvalidArgument("an encryption_key_provider needs encryption_key_id: the id of the current key")
        assert provider is not None
        key = provider(_valid_key_id(key_id, "encryption key id"))
        if key is None:
            raise InvalidArgument(f"the encryption key provider has no key for the current id {key_id!r}")
    return Keyring(_key_bytes(key, "encryption key"), key_id, older_keys, provider)


def read_key_file(path: str) -> tuple[bytes, str | None, dict[str, bytes]]:
    """(current key, its id or None, older keys by id) from a key file: 32 raw bytes, one key as hex or
    base64, or lines `ID KEY` (hex or base64; `#` starts a comment), the first line the current key."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise InvalidArgument(f"cannot read the encryption key file {path!r}: {exc.strerror}") from exc
    if len(raw) == KEY_BYTES:
        return raw, None, {}
    try:
        lines = [line.split("#", 1)[0].split() for line in raw.decode("ascii").splitlines()]
    except UnicodeDecodeError:
        raise InvalidArgument(f"encryption key file {path!r} holds neither 32 raw bytes nor text") from None
    lines = [words for words in lines if words]
    if len(lines) == 1 and len(lines[0]) == 1:
        return _key_bytes(lines[0][0], f"the key in {path}"), None, {}
    if not lines or any(len(words) != 2 for words in lines):
        raise InvalidArgument(f"encryption key file {path!r} must hold one key, or lines `ID KEY` (the first the "
                              f"current key)")
    keys = {_valid_key_id(words[0], f"a key id in {path}"): _key_bytes(words[1], f"key {words[0]!r} in {path}")
            for words in lines}
    current = lines[0][0]
    return keys.pop(current), current, keys


def _older(older: Mapping[str, Any] | Iterable[Any]) -> dict[str, bytes]:
    """Older keys by id: a mapping id -> key, or keys alone (each under its derived id)."""
    if isinstance(older, Mapping):
        return {_valid_key_id(k, "encryption key id"): _key_bytes(v, f"key {k!r}") for k, v in older.items()}
    if isinstance(older, (str, bytes, bytearray)):
        raise InvalidArgument("encryption_old_keys must be a mapping of id to key, or a list of keys")
    keys = [_key_bytes(v, "an old encryption key") for v in older]
    return {key_id_of(k): k for k in keys}


def check_files(paths: Iterable[str], keyring: Keyring | None) -> None:
    """Raise EncryptionKeyMissing / EncryptionKeyWrong (naming the file) for the first encrypted file among
    `paths` whose key is not held; files that are plaintext, gone, or hold no complete header are skipped
    (the readers judge those)."""
    for path in paths:
        try:
            with open(path, "rb") as f:
                prefix = f.read(FILE_HEADER_BYTES)
        except (FileNotFoundError, IsADirectoryError):
            continue
        if not is_encrypted(prefix) or len(prefix) < FILE_HEADER_BYTES:
            continue
        try:
            header = parse_header(prefix, path)
        except CorruptionError:
            continue
        if keyring is None:
            raise EncryptionKeyMissing(f"{path} is encrypted (key id {header.key_id!r}) and no encryption key was "
                                       f"given: open the store with StoreConfig(encryption_key=...)", path=path,
                                       key_id=header.key_id)
        keyring.require(header, path)


def store_files(store_path: str) -> list[str]:
    """The files of a store directory that may be encrypted: WAL segments and index snapshots."""
    found = []
    for folder, suffix in (("wal", ".wal"), ("snapshots", ".snap")):
        directory = os.path.join(store_path, folder)
        if os.path.isdir(directory):
            found += sorted(os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(suffix))
    return found


def check_store_keys(store_path: str, keyring: Keyring | None) -> None:
    """Refuse (before anything is changed) a store with a file whose key is not held."""
    check_files(store_files(store_path), keyring)


# -- whole files, in chunks (a backup's table file) ------------------------------------------------------
CHUNK_BYTES = 1 << 20
_CHUNK = struct.Struct("<IB")  # plaintext bytes, last-chunk flag


def _chunk_aad(header: bytes, index: int, last: bool) -> bytes:
    return header + struct.pack("<QB", index, last)


def seal_file(source: str, target: str, keyring: Keyring, kind: int = KIND_BACKUP) -> None:
    """Write `source` encrypted to `target`: the file header, then chunks of up to 1 MiB, each sealed with
    its index and a last-chunk flag as AAD (so a chunk moved, dropped or cut off is found)."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        seal_stream(src, dst, keyring, kind)


def unseal_file(source: str, target: str, keyring: Keyring | None) -> None:
    """Write the plaintext of the file `seal_file` made at `source` to `target`. EncryptionKeyMissing /
    EncryptionKeyWrong for a key not held; CorruptionError naming `source` for a chunk that fails its GCM
    tag or a file cut short."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        open_stream(src, dst, keyring, source)


def seal_bytes(data: bytes, keyring: Keyring, kind: int) -> bytes:
    """`data` as `seal_file` would write it (any size: a single AES-GCM call takes at most 2 GiB)."""
    out = io.BytesIO()
    seal_stream(io.BytesIO(data), out, keyring, kind)
    return out.getvalue()


def open_bytes(data: bytes, keyring: Keyring | None, path: str) -> bytes:
    """The plaintext of what `seal_bytes` made (read from `path`, which errors name)."""
    out = io.BytesIO()
    open_stream(io.BytesIO(data), out, keyring, path)
    return out.getvalue()


def seal_stream(src: BinaryIO, dst: BinaryIO, keyring: Keyring, kind: int) -> None:
    """Copy `src` to `dst` sealed: the file header under the current key, then the chunks."""
    sealer = keyring.new_sealer(kind)
    header = sealer.header.encode()
    dst.write(header)
    index, chunk = 0, src.read(CHUNK_BYTES)
    while True:
        following = src.read(CHUNK_BYTES) if chunk else b""
        last = not following
        dst.write(_CHUNK.pack(len(chunk), last))
        dst.write(sealer.seal(chunk, _chunk_aad(header, index, last)))
        if last:
            break
        index, chunk = index + 1, following


def open_stream(src: BinaryIO, dst: BinaryIO, keyring: Keyring | None, path: str) -> None:
    """Copy the plaintext of the sealed stream `src` to `dst` (errors name `path`)."""
    name = os.path.basename(path)
    header_bytes = src.read(FILE_HEADER_BYTES)
    header = parse_header(header_bytes, path)
    if keyring is None:
        raise EncryptionKeyMissing(f"{path} is encrypted (key id {header.key_id!r}) and no encryption key was "
                                   f"given", path=path, key_id=header.key_id)
    sealer = keyring.sealer(header, path)
    index, offset = 0, FILE_HEADER_BYTES
    while True:
        head = src.read(_CHUNK.size)
        if len(head) < _CHUNK.size:
            raise CorruptionError(f"encrypted file {path} ends before its last chunk", segment=name, offset=offset)
        size, last = _CHUNK.unpack(head)
        sealed = src.read(size + SEAL_OVERHEAD)
        if len(sealed) < size + SEAL_OVERHEAD:
            raise CorruptionError(f"encrypted file {path} ends inside chunk {index}", segment=name, offset=offset)
        dst.write(sealer.open(sealed, _chunk_aad(header_bytes, index, bool(last)), path, offset))
        offset += _CHUNK.size + len(sealed)
        if last:
            break
        index += 1
    if src.read(1):
        raise CorruptionError(f"encrypted file {path} has bytes after its last chunk", segment=name, offset=offset)
