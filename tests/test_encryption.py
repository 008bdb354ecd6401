"""Encryption at rest (issue 18, points 3 and 4): AES-256-GCM over WAL segments, index snapshots and
backups, with the key id in each file's header.

Real files throughout: stores written, closed and reopened, a writer process killed with SIGKILL,
backups restored, bytes altered on disk. What is checked: round trips; a changed ciphertext byte is
CorruptionError naming the file (the CRC for accidental damage; the GCM tag when the CRC was made to
match); a missing or wrong key is a typed error naming the file with every file unchanged (hashed
before and after); key rotation; and that no distinctive property value is found in any byte of the
WAL, the snapshots or a backup (state.duckdb is the documented exception, asserted as such).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import signal
import struct
import subprocess
import sys
import time
import zlib

import pytest

import knowledge
from knowledge.config import StoreConfig
from knowledge.errors import CorruptionError, EncryptionKeyMissing, EncryptionKeyWrong, InvalidArgument
from knowledge.storage import crypto
from knowledge.storage.wal import WriteAheadLog
from knowledge.storage.wal import record as frames
from knowledge.storage.wal.log import list_segments

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRETS = [b"ZANZIBAR-QUOKKA-7731", b"MARGINALIA-OSPREY-0419", b"TOPSECRET-KEYNAME-55"]


def _config(key: bytes | None = KEY_A, key_id: str | None = "a", **extra) -> StoreConfig:
    if key is None:
        return StoreConfig(**extra)
    return StoreConfig(encryption_key=key, encryption_key_id=key_id, **extra)


def _populate(store: knowledge.Store, n: int = 20, tag: str = "") -> None:
    if "Doc" not in store.schema.nodes:
        store.define_node_type("Doc", key="name", properties={"body": "text", "note": "str", "emb": "vector[4]"})
        store.define_edge_type("CITES", source="Doc", target="Doc", properties={"why": "str"})
    with store.session().transaction() as tx:
        tx.upsert_nodes("Doc", [{"name": f"{SECRETS[2].decode()}-{tag}{i}",
                                 "body": f"{SECRETS[0].decode()} words about item {i}",
                                 "note": SECRETS[1].decode(), "emb": [1.0, float(i), 0.5, 0.0]} for i in range(n)])
        if n >= 2:
            tx.upsert_edges("CITES", [{"src": f"{SECRETS[2].decode()}-{tag}0", "dst": f"{SECRETS[2].decode()}-{tag}1",
                                       "why": SECRETS[1].decode()}])


def _hashes(root: str) -> dict[str, str]:
    """sha256 of every file under `root` but the directory lock (which holds the opener's PID)."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name != "LOCK":
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _files(root: str) -> list[str]:
    return [os.path.join(folder, name) for folder, _, files in os.walk(root) for name in files]


def _frames(path: str) -> list[tuple[int, int]]:
    """(offset, payload bytes) of each frame of an encrypted segment."""
    with open(path, "rb") as f:
        data = f.read()
    assert crypto.is_encrypted(data)
    out, offset = [], crypto.FILE_HEADER_BYTES
    while offset + frames.HEADER_BYTES <= len(data):
        _, size, *_ = frames.HEADER.unpack_from(data, offset)
        out.append((offset, size))
        offset += frames.HEADER_BYTES + size
    return out


def _alter_ciphertext(path: str, frame_index: int, *, fix_crc: bool) -> tuple[int, int]:
    """Flip one ciphertext byte of frame `frame_index`; recompute its CRC when `fix_crc` (what someone who
    knows the format would do). Returns (frame offset, LSN)."""
    offset, size = _frames(path)[frame_index]
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        data[offset + frames.HEADER_BYTES + crypto.NONCE_BYTES + 1] ^= 0x01
        if fix_crc:
            head = bytes(data[offset:offset + frames.HEADER.size])
            payload = bytes(data[offset + frames.HEADER_BYTES:offset + frames.HEADER_BYTES + size])
            struct.pack_into("<I", data, offset + frames.HEADER.size, zlib.crc32(payload, zlib.crc32(head)))
        f.seek(0)
        f.write(data)
    lsn = frames.HEADER.unpack_from(data, offset)[2]
    return offset, lsn


# -- round trips ----------------------------------------------------------------------------------------------
def test_write_close_reopen_round_trip(tmp_path):
    path = str(tmp_path / "s.store")
    with knowledge.open(path, config=_config()) as store:
        _populate(store)
        store.checkpoint()  # snapshots written (sealed), then more WAL after them
        _populate(store, 5, tag="late")
        expected = store.session().scan("Doc").sort_by("_id").to_pylist()
    with knowledge.open(path, config=_config()) as store:
        session = store.session()
        assert session.scan("Doc").sort_by("_id").to_pylist() == expected
        assert session.get("Doc", f"{SECRETS[2].decode()}-late3")["note"] == SECRETS[1].decode()
        hits = session.search([1.0, 3.0, 0.5, 0.0], k=1, type="Doc")
        assert hits.column("_key").to_pylist() == [f"{SECRETS[2].decode()}-3"]
        assert session.keyword_search(SECRETS[0].decode(), k=30).num_rows == 25
        assert [n.key for n in session.neighbors("Doc", f"{SECRETS[2].decode()}-0", "CITES")] == [
            f"{SECRETS[2].decode()}-1"]
    for path_ in _files(os.path.join(path, "wal")) + _files(os.path.join(path, "snapshots")):
        if path_.endswith((".wal", ".snap")):
            header = crypto.read_header(path_)
            assert header is not None and header.key_id == "a", path_


def test_no_plaintext_value_in_wal_snapshots_or_backup(tmp_path):
    """Grep every byte: the distinctive values are in no WAL segment, snapshot or backup file; the same
    writes to an unencrypted store put them in its WAL (the grep can fail), and state.duckdb holds them
    in plaintext, which the README says."""
    plain, sealed = str(tmp_path / "plain.store"), str(tmp_path / "sealed.store")
    for path, config in ((plain, _config(None)), (sealed, _config())):
        with knowledge.open(path, config=config) as store:
            _populate(store)
            store.checkpoint()
            _populate(store, 3, tag="tail")  # records after the checkpoint stay in the live segment
            store.backup(path + ".backup")

    def found(files: list[str]) -> set[str]:
        hits = set()
        for name in files:
            with open(name, "rb") as f:
                data = f.read()
            if any(secret in data for secret in SECRETS):
                hits.add(os.path.relpath(name, str(tmp_path)))
        return hits

    plain_wal = [p for p in _files(os.path.join(plain, "wal")) if p.endswith(".wal")]
    assert found(plain_wal), "the unencrypted WAL should hold the values (else this grep proves nothing)"
    sealed_files = _files(os.path.join(sealed, "wal")) + _files(os.path.join(sealed, "snapshots"))
    assert any(p.endswith(".snap") for p in sealed_files) and any(p.endswith(".wal") for p in sealed_files)
    assert found(sealed_files) == set()
    backup_files = _files(sealed + ".backup")
    assert any(p.endswith("state.duckdb.enc") for p in backup_files)
    assert not any(os.path.basename(p) == "state.duckdb" for p in backup_files)
    assert found(backup_files) == set()
    # the documented exception: DuckDB's own file stays plaintext in the live store (README says so)
    assert found([os.path.join(sealed, "state.duckdb")])
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme[readme.index("### Encryption at rest"):]
    assert "state.duckdb" in section and "plaintext" in section


def test_backup_and_restore(tmp_path):
    path, backup = str(tmp_path / "s.store"), str(tmp_path / "backup")
    with knowledge.open(path, config=_config()) as store:
        _populate(store)
        store.checkpoint()
        _populate(store, 4, tag="after")
        lsn = store.backup(backup)
        expected = store.session().scan("Doc").sort_by("_id").to_pylist()
    before = _hashes(backup)
    with pytest.raises(EncryptionKeyMissing) as missing:
        knowledge.restore(backup, str(tmp_path / "r0"))
    assert missing.value.path.startswith(backup)
    with pytest.raises(EncryptionKeyWrong):
        knowledge.restore(backup, str(tmp_path / "r0"), config=_config(KEY_B, "a"))
    assert not os.path.exists(tmp_path / "r0") and _hashes(backup) == before
    assert knowledge.restore(backup, str(tmp_path / "r1"), config=_config()) == lsn
    with knowledge.open(str(tmp_path / "r1"), config=_config()) as restored:
        assert restored.session().scan("Doc").sort_by("_id").to_pylist() == expected
        _populate(restored, 2, tag="restored")  # the restored store writes on
    # a sealed table file with one changed byte: CorruptionError naming it, no destination left
    sealed = os.path.join(backup, "state.duckdb.enc")
    with open(sealed, "r+b") as f:
        f.seek(crypto.FILE_HEADER_BYTES + 5 + crypto.NONCE_BYTES + 100)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x20]))
    with pytest.raises(CorruptionError, match="state.duckdb.enc") as damaged:
        knowledge.restore(backup, str(tmp_path / "r2"), config=_config())
    assert "AES-GCM" in str(damaged.value)
    assert not os.path.exists(tmp_path / "r2")


# -- a writer killed with SIGKILL ---------------------------------------------------------------------------
WRITER = r"""
import json, sys
import knowledge
path, key_hex, key_id, old = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
config = knowledge.StoreConfig(encryption_key=bytes.fromhex(key_hex), encryption_key_id=key_id,
                               encryption_old_keys={k: bytes.fromhex(v) for k, v in old.items()},
                               segment_bytes_max=8 << 10)
store = knowledge.open(path, config=config)
if "Row" not in store.schema.nodes:
    store.define_node_type("Row", key="k", properties={"secret": "str", "n": "int"})
session = store.session()
n = int(sys.argv[5])
print(json.dumps({"ready": 1}), flush=True)
while True:
    n += 1
    with session.transaction() as tx:
        tx.upsert_nodes("Row", [{"k": f"row-{n}", "secret": "ZANZIBAR-QUOKKA-7731-%d" % n, "n": n}])
    print(json.dumps({"ack": n}), flush=True)
    if n % 37 == 0:
        store.checkpoint()
"""


def test_recovery_after_sigkill_with_rotation(tmp_path):
    """A real writer process killed mid-commit, four times, the key rotated between runs: every
    acknowledged row is there after each reopen, and nothing of it is plaintext in the WAL."""
    _sigkill_trials(tmp_path, trials=4, keys_count=4)


@pytest.mark.slow
def test_recovery_after_sigkill_many_trials(tmp_path):
    """The same, 40 kills, the key rotated every fifth run."""
    _sigkill_trials(tmp_path, trials=40, keys_count=8)


def _sigkill_trials(tmp_path, *, trials: int, keys_count: int) -> None:
    path = str(tmp_path / "s.store")
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    keys = {f"key{i}": hashlib.sha256(f"key {i}".encode()).digest() for i in range(keys_count)}
    key_list = list(keys.items())
    rng = random.Random(18)
    acked: set[int] = set()
    n = 0
    for trial in range(trials):
        current = trial * keys_count // trials
        key_id, key = key_list[current]
        old = {k: v.hex() for k, v in key_list[:current]}
        proc = subprocess.Popen([sys.executable, str(script), path, key.hex(), key_id, json.dumps(old), str(n)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline()) == {"ready": 1}, proc.stderr.read() if proc.stderr else ""
        deadline = time.monotonic() + rng.uniform(0.3, 0.8)
        lines = []
        while time.monotonic() < deadline:
            lines.append(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        lines += proc.stdout.read().splitlines(keepends=True)
        proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()
        trial_acks = [json.loads(line)["ack"] for line in lines if line.endswith("\n") and '"ack"' in line]
        assert trial_acks, "the writer acknowledged nothing before it was killed"
        acked.update(trial_acks)
        config = _config(key, key_id, encryption_old_keys={k: keys[k] for k in old})
        with knowledge.open(path, config=config) as store:
            rows = store.session().scan("Row", columns=["k", "secret", "n"]).to_pylist()
            present = {row["n"] for row in rows}
            assert acked <= present, f"acknowledged rows lost: {sorted(acked - present)[:5]}"
            assert all(row["secret"] == f"{SECRETS[0].decode()}-{row['n']}" for row in rows)
            n = max(present)
    for name in _files(os.path.join(path, "wal")):
        with open(name, "rb") as f:
            assert SECRETS[0] not in f.read(), name
    headers = {crypto.read_header(p).key_id for p in _files(os.path.join(path, "wal")) if p.endswith(".wal")}
    assert key_list[-1][0] in headers


# -- tampering ----------------------------------------------------------------------------------------------
def _store_with_segments(path: str) -> None:
    with knowledge.open(path, config=_config(segment_bytes_max=4 << 10)) as store:
        store.define_node_type("Row", key="k", properties={"v": "str"})
        for i in range(40):
            store.session().transaction().upsert_nodes("Row", [{"k": f"r{i}", "v": "x" * 200}]).commit()
    assert len(list_segments(os.path.join(path, "wal"))) >= 3


@pytest.mark.parametrize("where", ["sealed segment", "live segment, last record"])
def test_altered_ciphertext_with_matching_crc_fails_the_gcm_tag(tmp_path, where):
    path = str(tmp_path / "s.store")
    _store_with_segments(path)
    segments = list_segments(os.path.join(path, "wal"))
    segment = segments[0] if where == "sealed segment" else segments[-1]
    _, lsn = _alter_ciphertext(segment.path, 1 if where == "sealed segment" else -1, fix_crc=True)
    before = _hashes(path)
    with pytest.raises(CorruptionError) as info:
        knowledge.open(path, config=_config())
    assert "AES-GCM authentication tag" in str(info.value)
    assert info.value.segment == os.path.basename(segment.path) and info.value.lsn == lsn
    assert _hashes(path) == before  # a valid CRC with a failing tag is no torn tail: nothing truncated


def test_altered_ciphertext_byte_is_caught_by_the_crc_before_the_tail(tmp_path):
    path = str(tmp_path / "s.store")
    _store_with_segments(path)
    segment = list_segments(os.path.join(path, "wal"))[0]
    offset, lsn = _alter_ciphertext(segment.path, 0, fix_crc=False)
    with pytest.raises(CorruptionError) as info:
        knowledge.open(path, config=_config())
    assert info.value.segment == os.path.basename(segment.path) and info.value.offset == offset
    assert info.value.lsn == lsn


def test_altered_snapshot_is_rebuilt_with_a_warning(tmp_path, caplog):
    path = str(tmp_path / "s.store")
    with knowledge.open(path, config=_config()) as store:
        _populate(store)
        store.checkpoint()
        expected = store.session().search([1.0, 2.0, 0.5, 0.0], k=3, type="Doc").column("_key").to_pylist()
    snapshot = os.path.join(path, "snapshots", "vectors-Doc-emb.snap")
    with open(snapshot, "r+b") as f:
        data = bytearray(f.read())
        data[len(data) // 2] ^= 0x04
        f.seek(0)
        f.write(data)
    with caplog.at_level(logging.WARNING, logger="knowledge.store"):
        with knowledge.open(path, config=_config()) as store:
            got = store.session().search([1.0, 2.0, 0.5, 0.0], k=3, type="Doc").column("_key").to_pylist()
    assert got == expected
    assert any("vectors-Doc-emb.snap" in r.getMessage() and "AES-GCM" in r.getMessage() for r in caplog.records)


# -- wrong or missing keys ---------------------------------------------------------------------------------
def test_missing_or_wrong_key_is_refused_and_nothing_changes(tmp_path):
    path = str(tmp_path / "s.store")
    with knowledge.open(path, config=_config()) as store:
        _populate(store)
        store.checkpoint()
        _populate(store, 3, tag="tail")
    live = list_segments(os.path.join(path, "wal"))[-1].path
    with open(live, "ab") as f:  # a torn tail: an open that got as far as recovery would cut it
        f.write(b"KNWL" + bytes(20))
    before = _hashes(path)
    cases = [
        (StoreConfig(), EncryptionKeyMissing),                                   # no key at all
        (_config(KEY_B, "b"), EncryptionKeyMissing),                             # another key id
        (_config(KEY_B, "a"), EncryptionKeyWrong),                               # the id, another key
        (_config(KEY_B, None), EncryptionKeyMissing),                            # derived id: unknown
    ]
    for config, error in cases:
        with pytest.raises(error) as info:
            knowledge.open(path, config=config)
        assert info.value.path is not None and info.value.path.startswith(path)
        assert info.value.key_id == "a" and os.path.basename(info.value.path) in str(info.value)
        assert _hashes(path) == before
    with knowledge.open(path, config=_config()) as store:  # the right key: the torn tail goes, rows stay
        assert store.stats()["recovery"]["truncated"]["count"] == 1
        assert store.session().scan("Doc").num_rows == 23


def test_rotation_new_segments_under_new_key_old_readable_until_checkpoint(tmp_path):
    path = str(tmp_path / "s.store")
    with knowledge.open(path, config=_config(KEY_A, "a")) as store:
        _populate(store)
        store.checkpoint()
        _populate(store, 2, tag="a-tail")
    rotated = _config(KEY_B, "b", encryption_old_keys={"a": KEY_A})
    with knowledge.open(path, config=rotated) as store:
        _populate(store, 2, tag="b")
        ids = [crypto.read_header(s.path).key_id for s in list_segments(os.path.join(path, "wal"))]
        assert ids[0] == "a" and ids[-1] == "b"
    with pytest.raises(EncryptionKeyMissing) as info:  # the old key is still needed: its segment is there
        knowledge.open(path, config=_config(KEY_B, "b"))
    assert info.value.key_id == "a"
    with knowledge.open(path, config=rotated) as store:
        store.checkpoint()  # drops the covered segments and rewrites the snapshots under the new key
        headers = [crypto.read_header(p) for p in crypto.store_files(path)]
        assert {h.key_id for h in headers if h is not None} == {"b"}
    with knowledge.open(path, config=_config(KEY_B, "b")) as store:  # key A no longer needed
        assert store.session().scan("Doc").num_rows == 24


def test_rotation_checkpoint_without_writes_retires_the_old_key(tmp_path):
    path = str(tmp_path / "s.store")
    with knowledge.open(path, config=_config(KEY_A, "a")) as store:
        _populate(store)
    with knowledge.open(path, config=_config(KEY_B, "b", encryption_old_keys={"a": KEY_A})) as store:
        store.checkpoint()  # no write since the rotation: the old live segment is sealed and dropped
    assert {crypto.read_header(p).key_id for p in crypto.store_files(path)} == {"b"}
    with knowledge.open(path, config=_config(KEY_B, "b")) as store:
        assert store.session().scan("Doc").num_rows == 20
        _populate(store, 1, tag="after")


def test_key_file_and_provider(tmp_path):
    key_file = tmp_path / "store.key"
    key_file.write_text(KEY_A.hex() + "\n")
    path = str(tmp_path / "s.store")
    with knowledge.open(path, config=StoreConfig(encryption_key_file=str(key_file), encryption_key_id="a")) as store:
        _populate(store)
    asked: list[str] = []

    def kms(key_id: str) -> bytes | None:
        asked.append(key_id)
        return {"a": KEY_A, "b": KEY_B}.get(key_id)

    config = StoreConfig(encryption_key_provider=kms, encryption_key_id="b")
    with knowledge.open(path, config=config) as store:  # current key b; a asked for as files need it
        assert store.session().scan("Doc").num_rows == 20
        _populate(store, 1, tag="b")
    assert asked[0] == "b" and "a" in asked
    with pytest.raises(InvalidArgument, match="encryption_key_id"):
        StoreConfig(encryption_key_provider=kms).keyring()
    with pytest.raises(InvalidArgument, match="32 bytes"):
        StoreConfig(encryption_key=b"too short")
    with pytest.raises(InvalidArgument, match="once"):
        StoreConfig(encryption_key=KEY_A, encryption_key_file=str(key_file))


def test_plaintext_store_turns_encrypted(tmp_path):
    path = str(tmp_path / "s.store")
    with knowledge.open(path) as store:
        _populate(store)
    with knowledge.open(path) as store:
        store.checkpoint()  # plaintext snapshots
    with knowledge.open(path, config=_config()) as store:  # plaintext segments read; new ones sealed
        _populate(store, 2, tag="sealed")
        assert store.session().scan("Doc").num_rows == 22
        store.backup(path + ".backup")  # the plaintext segment and snapshots are sealed in the copy
        store.checkpoint()
    for name in _files(path + ".backup"):
        with open(name, "rb") as f:
            data = f.read()
        assert not any(secret in data for secret in SECRETS), name
    assert knowledge.restore(path + ".backup", str(tmp_path / "restored"), config=_config()) > 0
    with knowledge.open(str(tmp_path / "restored"), config=_config()) as restored:
        assert restored.session().scan("Doc").num_rows == 22
    headers = [crypto.read_header(s.path) for s in list_segments(os.path.join(path, "wal"))]
    assert headers and all(h is not None and h.key_id == "a" for h in headers)


# -- the WAL itself -------------------------------------------------------------------------------------------
def test_wal_torn_tail_truncate_and_replica_append(tmp_path):
    directory = str(tmp_path / "wal")
    keyring = crypto.Keyring(KEY_A, "a")
    wal = WriteAheadLog(directory, keyring=keyring, segment_bytes_max=1024)
    payloads = [SECRETS[0] + b"-%d" % i * (i + 1) for i in range(30)]
    for payload in payloads:
        wal.append(payload, epoch=1)
    wal.sync_to(wal.last_lsn)
    assert wal.truncate_after(25) == 5  # a deposed primary's tail
    wal.append_record(26, 2, 123, b"replica copy")  # what replication hands a replica: plaintext records
    wal.sync_to(26)
    wal.close()
    live = list_segments(directory)[-1].path
    with open(live, "ab") as f:
        f.write(frames.HEADER.pack(frames.MAGIC, 500, 27, 2, 0))  # an append cut short by a crash
    reopened = WriteAheadLog(directory, keyring=keyring)
    assert reopened.recovery.truncated_count == 1
    records = list(reopened.read_from(1))
    assert [r.payload for r in records] == payloads[:25] + [b"replica copy"]
    assert records[-1].epoch == 2 and records[-1].timestamp_ns == 123
    reopened.close()
    with pytest.raises(EncryptionKeyMissing):
        WriteAheadLog(directory)
    for segment in list_segments(directory):
        with open(segment.path, "rb") as f:
            assert SECRETS[0] not in f.read()


def test_segment_header_torn_by_a_crash_mid_roll(tmp_path):
    """A crash while a new segment's header was being written leaves a short file: it holds no record,
    so the open cuts it and gives it a whole header; every record before it stays."""
    directory = str(tmp_path / "wal")
    keyring = crypto.Keyring(KEY_A, "a")
    wal = WriteAheadLog(directory, keyring=keyring)
    for i in range(5):
        wal.append(b"record %d" % i, epoch=1)
    wal.sync_to(5)
    wal.close()
    header = keyring.new_header(crypto.KIND_WAL).encode()
    torn = os.path.join(directory, "0000000000000006.wal")
    with open(torn, "wb") as f:
        f.write(header[:30])
    reopened = WriteAheadLog(directory, keyring=keyring)
    assert reopened.recovery.truncated_count == 0 and reopened.last_lsn == 5
    assert reopened.append(b"after", epoch=1) == 6
    reopened.sync_to(6)
    reopened.close()
    assert crypto.read_header(torn) is not None
    again = WriteAheadLog(directory, keyring=keyring)
    assert [r.payload for r in again.read_from(1)] == [b"record %d" % i for i in range(5)] + [b"after"]
    again.close()


def test_recover_rebuilds_an_encrypted_store_from_its_wal(tmp_path):
    path = str(tmp_path / "s.store")
    with knowledge.open(path, config=_config()) as store:
        _populate(store)
        expected = store.session().scan("Doc").sort_by("_id").to_pylist()
    os.remove(os.path.join(path, "state.duckdb"))  # the plaintext table file lost: the sealed WAL rebuilds it
    with pytest.raises(EncryptionKeyMissing):
        knowledge.recover(path, str(tmp_path / "r0"))
    assert not os.path.exists(tmp_path / "r0")
    report = knowledge.recover(path, str(tmp_path / "r1"), config=_config())
    assert report["lsn"] >= 2
    with knowledge.open(str(tmp_path / "r1"), config=_config()) as store:
        assert store.session().scan("Doc").sort_by("_id").to_pylist() == expected


def test_key_file_with_ids_rotates_and_the_cli_reads_it_from_the_environment(tmp_path):
    path = str(tmp_path / "s.store")
    key_file = tmp_path / "keys"
    key_file.write_text(f"a {KEY_A.hex()}\n")
    with knowledge.open(path, config=StoreConfig(encryption_key_file=str(key_file))) as store:
        _populate(store)
    key_file.write_text(f"# current first\nb {KEY_B.hex()}\na {KEY_A.hex()}  # before the rotation\n")
    with knowledge.open(path, config=StoreConfig(encryption_key_file=str(key_file))) as store:
        _populate(store, 1, tag="b")
    assert {crypto.read_header(s.path).key_id for s in list_segments(os.path.join(path, "wal"))} == {"a", "b"}
    env = {k: v for k, v in os.environ.items() if k != "KNOWLEDGE_ENCRYPTION_KEY_FILE"}
    cli = [sys.executable, "-m", "knowledge.cli", "stats", path]
    refused = subprocess.run(cli, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert refused.returncode == 1 and "error:" in refused.stderr and "is encrypted" in refused.stderr
    env["KNOWLEDGE_ENCRYPTION_KEY_FILE"] = str(key_file)
    done = subprocess.run(cli, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["nodes"]["Doc"] == 21
    key_file.write_text("b not-a-key\n")
    with pytest.raises(InvalidArgument, match="keys"):
        StoreConfig(encryption_key_file=str(key_file)).keyring()


def test_sealed_chunks_moved_or_cut_are_found(tmp_path):
    """A sealed file (a snapshot, a backup's table file) is 1 MiB chunks, each bound to its index and
    to whether it is the last: chunks swapped, a last chunk dropped, or bytes appended are CorruptionError."""
    keyring = crypto.Keyring(KEY_A, "a")
    data = os.urandom(3 * crypto.CHUNK_BYTES + 100)
    sealed = crypto.seal_bytes(data, keyring, crypto.KIND_SNAPSHOT)
    assert crypto.open_bytes(sealed, keyring, "x.snap") == data
    chunk = struct.calcsize("<IB") + crypto.CHUNK_BYTES + crypto.SEAL_OVERHEAD
    start = crypto.FILE_HEADER_BYTES
    first, second = sealed[start:start + chunk], sealed[start + chunk:start + 2 * chunk]
    swapped = sealed[:start] + second + first + sealed[start + 2 * chunk:]
    for damaged in (swapped, sealed[:start + 3 * chunk], sealed + b"\0"):
        with pytest.raises(CorruptionError, match="x.snap"):
            crypto.open_bytes(damaged, keyring, "x.snap")
    with pytest.raises(EncryptionKeyWrong):
        crypto.open_bytes(sealed, crypto.Keyring(KEY_B, "a"), "x.snap")
