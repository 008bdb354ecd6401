"""Property tests (hypothesis) of the WAL framing, recovery, the ops payload and store replay."""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import knowledge
from knowledge.errors import CorruptionError, MissingEndpoint, NotFound
from knowledge.storage.ops import FLAG_ROWS, Op, OpKind, decode_ops, encode_ops
from knowledge.storage.rows import NodeRows
from knowledge.storage.wal import Record, WriteAheadLog
from knowledge.storage.wal import record as frames
from knowledge.storage.wal.segments import segment_name

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
U64 = st.integers(min_value=0, max_value=2**64 - 1)

# -- (a) frame encode/decode -------------------------------------------------------------------


records = st.builds(Record, lsn=U64, epoch=U64, timestamp_ns=U64, payload=st.binary(max_size=3000))


@settings(SETTINGS, max_examples=200)
@given(rec=records, prefix=st.binary(max_size=64))
def test_frame_round_trip(rec, prefix):
    frame = frames.encode(rec)
    assert len(frame) == rec.frame_bytes == frames.HEADER_BYTES + len(rec.payload)
    assert frames.decode(frame, 0) == rec
    assert frames.decode(prefix + frame + b"trailing", len(prefix)) == rec


@settings(SETTINGS, max_examples=100)
@given(rec=records, data=st.data())
def test_frame_prefix_is_torn(rec, data):
    frame = frames.encode(rec)
    cut = data.draw(st.integers(min_value=0, max_value=len(frame) - 1), label="cut")
    with pytest.raises(frames.FrameError) as info:
        frames.decode(frame[:cut], 0)
    assert info.value.torn


# -- helpers for on-disk logs ------------------------------------------------------------------


payload_lists = st.lists(st.binary(max_size=120), min_size=1, max_size=8)


def _write_segment(directory: str, payloads: list[bytes], epochs: list[int] | None = None) -> list[int]:
    """Write payloads through the WAL (one segment); return each record's offset, plus the end offset."""
    wal = WriteAheadLog(directory, fsync=False)
    offsets = [0]
    for index, payload in enumerate(payloads):
        wal.append(payload, 1 if epochs is None else epochs[index])
        offsets.append(offsets[-1] + frames.HEADER_BYTES + len(payload))
    wal.sync_to(wal.last_lsn)
    wal.close()
    path = os.path.join(directory, segment_name(1))
    assert os.path.getsize(path) == offsets[-1]
    return offsets


def _read_all(directory: str) -> tuple[WriteAheadLog, list[bytes]]:
    wal = WriteAheadLog(directory, fsync=False)
    got = list(wal.read_from(1))
    assert [r.lsn for r in got] == list(range(1, len(got) + 1))
    return wal, [r.payload for r in got]


# -- (b) truncation at any byte ---------------------------------------------------------------


@settings(SETTINGS, max_examples=150)
@given(payloads=payload_lists, data=st.data())
def test_truncation_anywhere_recovers_the_whole_record_prefix(payloads, data):
    with tempfile.TemporaryDirectory() as root:
        directory = os.path.join(root, "wal")
        offsets = _write_segment(directory, payloads)
        cut = data.draw(st.integers(min_value=0, max_value=offsets[-1]), label="cut")
        path = os.path.join(directory, segment_name(1))
        with open(path, "r+b") as f:
            f.truncate(cut)
        whole = sum(1 for end in offsets[1:] if end <= cut)

        wal, got = _read_all(directory)
        try:
            assert got == payloads[:whole]
            assert wal.last_lsn == whole
            assert os.path.getsize(path) == offsets[whole]  # the torn part is gone from disk
            assert wal.append(b"next", 1) == whole + 1  # and the log carries on after it
            wal.sync_to(whole + 1)
        finally:
            wal.close()
        _, again = _read_all(directory)
        assert again == payloads[:whole] + [b"next"]


# -- (c) single bit flips ----------------------------------------------------------------------


@settings(SETTINGS, max_examples=200)
@given(payloads=st.lists(st.binary(max_size=60), min_size=2, max_size=6), data=st.data())
def test_bit_flip_before_the_last_record_raises_corruption(payloads, data):
    """A flipped bit in any record but the last must raise CorruptionError at that record's offset.

    FAILS ON A CORE BUG (knowledge/storage/wal/log.py, _is_tail_damage): a flip in the `payload_bytes` header
    field that makes the frame claim to run past the end of the file is taken for a torn tail, so
    recovery silently truncates that record and every acknowledged record after it.
    """
    with tempfile.TemporaryDirectory() as root:
        directory = os.path.join(root, "wal")
        offsets = _write_segment(directory, payloads)
        victim = data.draw(st.integers(min_value=0, max_value=len(payloads) - 2), label="record")
        byte = data.draw(st.integers(min_value=offsets[victim], max_value=offsets[victim + 1] - 1), label="byte")
        bit = data.draw(st.integers(min_value=0, max_value=7), label="bit")
        path = os.path.join(directory, segment_name(1))
        damaged = bytearray(open(path, "rb").read())
        damaged[byte] ^= 1 << bit
        open(path, "wb").write(bytes(damaged))

        with pytest.raises(CorruptionError) as info:
            WriteAheadLog(directory, fsync=False).close()
        assert info.value.segment == segment_name(1)
        assert info.value.offset == offsets[victim]
        assert segment_name(1) in str(info.value)
        assert f"offset {offsets[victim]}" in str(info.value)
        assert open(path, "rb").read() == bytes(damaged)  # a refused open modifies nothing


@settings(SETTINGS, max_examples=150)
@given(payloads=st.lists(st.binary(max_size=60), min_size=1, max_size=5), data=st.data())
def test_bit_flip_in_the_last_record_is_a_torn_tail_or_corruption(payloads, data):
    """A flip in the last record may be taken for a torn tail (that record goes, nothing else) or
    reported as corruption of that record; it must never yield a damaged record or lose earlier ones."""
    with tempfile.TemporaryDirectory() as root:
        directory = os.path.join(root, "wal")
        offsets = _write_segment(directory, payloads)
        last = len(payloads) - 1
        byte = data.draw(st.integers(min_value=offsets[last], max_value=offsets[-1] - 1), label="byte")
        bit = data.draw(st.integers(min_value=0, max_value=7), label="bit")
        path = os.path.join(directory, segment_name(1))
        damaged = bytearray(open(path, "rb").read())
        damaged[byte] ^= 1 << bit
        open(path, "wb").write(bytes(damaged))

        try:
            wal, got = _read_all(directory)
        except CorruptionError as exc:
            assert exc.segment == segment_name(1)
            assert exc.offset == offsets[last]
            assert open(path, "rb").read() == bytes(damaged)
            return
        try:
            assert got == payloads[:last]
            assert os.path.getsize(path) == offsets[last]
        finally:
            wal.close()


@pytest.mark.parametrize("bit", [20, 31])
def test_length_bit_flip_in_an_early_record_is_not_a_torn_tail(tmp_path, bit):
    """CORE BUG reproducer (knowledge/storage/wal/log.py, _is_tail_damage, the `exc.torn` and `payload_bytes`
    branches): flipping one high bit of the payload length of record 1 of 5 makes recovery treat the
    whole log as a torn tail and truncate it to zero bytes -- every acknowledged record is lost and
    the file is modified, instead of CorruptionError(segment, offset 0)."""
    directory = str(tmp_path / "wal")
    offsets = _write_segment(directory, [b"p%d" % i * 10 for i in range(5)])
    path = os.path.join(directory, segment_name(1))
    damaged = bytearray(open(path, "rb").read())
    damaged[4 + bit // 8] ^= 1 << (bit % 8)  # payload_bytes u32 of the first record
    open(path, "wb").write(bytes(damaged))
    try:
        with pytest.raises(CorruptionError) as info:
            WriteAheadLog(directory, fsync=False).close()
        assert info.value.offset == offsets[0]
    finally:
        assert open(path, "rb").read() == bytes(damaged), "the failed open truncated the WAL"


# -- (d) ops payload round trip ----------------------------------------------------------------


names = st.text(st.characters(blacklist_categories=("Cs",)), max_size=24)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
COLUMN_TYPES = {
    "int": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "str": (pa.string(), st.text(max_size=12)),
    "float": (pa.float64(), st.floats(allow_nan=False)),
    "bool": (pa.bool_(), st.booleans()),
    "labels": (pa.list_(pa.string()), st.lists(st.text(max_size=5), max_size=3)),
    "blob": (pa.binary(), st.binary(max_size=12)),
}


@st.composite
def arrow_tables(draw):
    rows = draw(st.integers(min_value=0, max_value=6))
    chosen = draw(st.lists(st.sampled_from(sorted(COLUMN_TYPES)), min_size=1, max_size=4, unique=True))
    columns = {}
    for index, kind in enumerate(chosen):
        arrow_type, values = COLUMN_TYPES[kind]
        cells = draw(st.lists(st.none() | values, min_size=rows, max_size=rows))
        columns[f"c{index}_{kind}"] = pa.array(cells, type=arrow_type)
    return pa.table(columns)


ROW_KINDS = {
    "str": st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
    "int": st.integers(-(2**63), 2**63 - 1),
    "float": st.floats(allow_nan=False),
    "bool": st.booleans(),
    "timestamp": st.integers(-(2**50), 2**50),
    "list[str]": st.lists(st.text(st.characters(blacklist_categories=("Cs",)), max_size=5), max_size=3),
    "vector[3]": st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=3, max_size=3).map(
        lambda v: np.array(v, dtype=np.float32)),
}


@st.composite
def node_rows_strategy(draw, name):
    count = draw(st.integers(min_value=0, max_value=5))
    kinds = draw(st.lists(st.sampled_from(sorted(ROW_KINDS)), min_size=1, max_size=4))
    columns = [draw(st.lists(st.none() | ROW_KINDS[kind], min_size=count, max_size=count)) for kind in kinds]
    labels = draw(st.lists(st.lists(st.text(min_size=1, max_size=4), max_size=2), min_size=count, max_size=count))
    ids = draw(st.none() | st.lists(st.integers(0, 2**40), min_size=count, max_size=count))
    return NodeRows(name, tuple(f"p{i}" for i in range(len(kinds))), tuple(kinds), columns, labels, ids)


@st.composite
def ops_strategy(draw):
    kind = draw(st.sampled_from(list(OpKind)))
    flags = draw(st.integers(min_value=0, max_value=255)) & ~FLAG_ROWS
    name = draw(names)
    if kind in (OpKind.SCHEMA, OpKind.META):
        return Op(kind, name, document=draw(json_values), flags=flags)
    if kind == OpKind.UPSERT_NODES and draw(st.booleans()):
        return Op(kind, name, rows=draw(node_rows_strategy(name)), flags=flags)
    return Op(kind, name, table=draw(arrow_tables()), flags=flags)


def _same_op(a: Op, b: Op) -> bool:
    if (a.kind, a.name, a.flags, a.document) != (b.kind, b.name, b.flags, b.document):
        return False
    if a.rows is not None or b.rows is not None:
        return (a.rows is not None and b.rows is not None and a.rows.encode() == b.rows.encode()
                and a.rows.to_table().equals(b.rows.to_table()))
    if a.table is None or b.table is None:
        return a.table is None and b.table is None
    return a.table.schema == b.table.schema and a.table.equals(b.table)


@settings(SETTINGS, max_examples=100)
@given(ops=st.lists(ops_strategy(), max_size=5), lsn=st.integers(min_value=0, max_value=2**40))
def test_ops_round_trip(ops, lsn):
    payload = encode_ops(ops)
    decoded = decode_ops(payload, lsn)
    assert len(decoded) == len(ops)
    for original, back in zip(ops, decoded, strict=True):
        assert _same_op(original, back), (original, back)
        assert back.may_replace == bool(original.flags & 1)
    assert encode_ops(decoded) == payload


@settings(SETTINGS, max_examples=100)
@given(ops=st.lists(ops_strategy(), min_size=1, max_size=3), data=st.data())
def test_truncated_ops_payload_is_corruption_or_a_prefix(ops, data):
    payload = encode_ops(ops)
    cut = data.draw(st.integers(min_value=0, max_value=len(payload) - 1), label="cut")
    try:
        decoded = decode_ops(payload[:cut], 7)
    except CorruptionError as exc:
        assert "record 7" in str(exc)
        return
    # a cut exactly at an op boundary is a valid (shorter) payload
    assert len(decoded) < len(ops)
    assert encode_ops(ops[:len(decoded)]) == payload[:cut]


# -- (e) store replay against a model ----------------------------------------------------------


KEYS = [f"k{i}" for i in range(7)]
key_st = st.sampled_from(KEYS)
action_st = st.one_of(
    st.tuples(st.just("upsert"), st.lists(st.tuples(key_st, st.integers(-1000, 1000)), min_size=1, max_size=4)),
    st.tuples(st.just("delete"), st.lists(key_st, min_size=1, max_size=3)),
    st.tuples(st.just("link"), st.lists(st.tuples(key_st, key_st), min_size=1, max_size=3)),
    st.tuples(st.just("unlink"), st.lists(st.tuples(key_st, key_st), min_size=1, max_size=2)),
)
transaction_st = st.lists(action_st, min_size=1, max_size=3)


class Model:
    """What the store should show: node key -> v, and the set of (src, dst) Link edges."""

    def __init__(self) -> None:
        self.nodes: dict[str, int] = {}
        self.edges: set[tuple[str, str]] = set()

    def apply(self, actions) -> bool:
        """Apply one transaction to a copy; commit it and return True, or return False if the store must
        reject it (an edge endpoint that does not exist at that point of the transaction)."""
        nodes, edges = dict(self.nodes), set(self.edges)
        for action, args in actions:
            if action == "upsert":
                for key, value in args:
                    nodes[key] = value
            elif action == "delete":
                for key in args:
                    nodes.pop(key, None)
                    edges = {(s, d) for s, d in edges if key not in (s, d)}
            elif action == "link":
                if any(s not in nodes or d not in nodes for s, d in args):
                    return False
                edges.update(args)
            elif action == "unlink":
                edges.difference_update(args)
        self.nodes, self.edges = nodes, edges
        return True


def _run(session, actions) -> None:
    with session.transaction() as tx:
        for action, args in actions:
            if action == "upsert":
                tx.upsert_nodes("Item", [{"k": k, "v": v} for k, v in args])
            elif action == "delete":
                tx.delete_nodes("Item", args)
            elif action == "link":
                tx.upsert_edges("Link", [{"src": s, "dst": d} for s, d in args])
            elif action == "unlink":
                tx.delete_edges("Link", [{"src": s, "dst": d} for s, d in args])


CONFIG = knowledge.StoreConfig(fsync=False)


def _open(path: str):
    return knowledge.open(path, config=CONFIG)


def _check(store, model: Model, where: str) -> None:
    s = store.session()
    assert s.count("Item") == len(model.nodes), where
    for key in KEYS:
        if key in model.nodes:
            assert s.get("Item", key)["v"] == model.nodes[key], (where, key)
            out = {r.key for r in s.neighbors("Item", key, "Link", direction="out")}
            inc = {r.key for r in s.neighbors("Item", key, "Link", direction="in")}
            assert out == {d for s_, d in model.edges if s_ == key}, (where, key, "out")
            assert inc == {s_ for s_, d in model.edges if d == key}, (where, key, "in")
        else:
            with pytest.raises(NotFound):
                s.get("Item", key)
    stats = s.stats()
    assert stats["nodes"] == {"Item": len(model.nodes)}, where
    assert stats["edges"] == {"Link": len(model.edges)}, where
    # the DuckDB side agrees with the in-memory graph
    scanned = s.scan("Item").to_pylist()
    assert {row["k"]: row["v"] for row in scanned} == model.nodes, where
    id_to_key = {row["_id"]: row["k"] for row in scanned}
    table = s.edges("Link").to_pylist()
    assert {(id_to_key[row["_src"]], id_to_key[row["_dst"]]) for row in table} == model.edges, where
    assert len(table) == len(model.edges), where


def _drop_tables(path: str) -> None:
    for name in os.listdir(path):
        if name.startswith("state.duckdb"):
            os.remove(os.path.join(path, name))


def _replay_case(transactions, reopen_after: set[int]) -> None:
    root = tempfile.mkdtemp()
    path = os.path.join(root, "store")
    try:
        store = _open(path)
        store.define_node_type("Item", key="k", properties={"v": "int"})
        store.define_edge_type("Link", source="Item", target="Item")
        model = Model()
        for index, actions in enumerate(transactions):
            expected = Model()
            expected.nodes, expected.edges = dict(model.nodes), set(model.edges)
            if expected.apply(actions):
                _run(store.session(), actions)
                model = expected
            else:
                with pytest.raises(MissingEndpoint):
                    _run(store.session(), actions)
            if index in reopen_after:
                store.close()
                store = _open(path)
        _check(store, model, "live")
        lsn = store.stats()["lsn"]
        store.close()

        store = _open(path)
        assert store.stats()["lsn"] == lsn
        _check(store, model, "reopened")
        store.close()

        _drop_tables(path)  # no checkpoint truncated the WAL: it alone must rebuild everything
        store = _open(path)
        try:
            assert store.stats()["lsn"] == lsn
            _check(store, model, "rebuilt from the WAL alone")
        finally:
            store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@settings(SETTINGS, max_examples=25)
@given(transactions=st.lists(transaction_st, min_size=1, max_size=12))
def test_replay_matches_model(transactions):
    _replay_case(transactions, reopen_after=set())


@settings(SETTINGS, max_examples=15)
@given(transactions=st.lists(transaction_st, min_size=2, max_size=12),
       reopen_after=st.sets(st.integers(0, 10), min_size=1, max_size=3))
@example(transactions=[[("upsert", [("k0", 1), ("k1", 2)])], [("link", [("k0", "k1")])],
                       [("delete", ["k1"])], [("upsert", [("k2", 3)])]],
         reopen_after={2})
def test_replay_with_reopens_between_transactions_matches_model(transactions, reopen_after):
    """Close and reopen the store after some transactions, then check replay as above.

    FAILS ON A CORE BUG (the explicit example; see test_wal_only_replay_does_not_resurrect_edges_of_deleted_nodes).
    """
    _replay_case(transactions, reopen_after)


def test_wal_only_replay_does_not_resurrect_edges_of_deleted_nodes(tmp_path):
    """CORE BUG reproducer: node ids are reused after a reopen, and WAL replay then revives old edges.

    knowledge/store.py Store._load_memory derives directory.next_id from the ids still present in DuckDB
    (plus `_meta.next_id`, which only Store.checkpoint writes). Delete the node with the highest id,
    close (the delete reaches DuckDB) and reopen: that id is handed out again to the next new node.
    The WAL now holds edge a->b (ids 0->1), delete b (1), upsert c (id 1 again). Replaying it from
    scratch (state.duckdb lost, or a replica) leaves the in-memory edge 0->1 in place (graph.py keeps
    edges of deleted nodes, relying on ids never being reused) so `neighbors(a)` shows c.
    """
    path = str(tmp_path / "store")
    store = _open(path)
    store.define_node_type("Item", key="k", properties={"v": "int"})
    store.define_edge_type("Link", source="Item", target="Item")
    s = store.session()
    with s.transaction() as tx:
        tx.upsert_nodes("Item", [{"k": "a", "v": 1}, {"k": "b", "v": 2}])
    with s.transaction() as tx:
        tx.upsert_edges("Link", [{"src": "a", "dst": "b"}])
    with s.transaction() as tx:
        tx.delete_nodes("Item", ["b"])
    store.close()
    store = _open(path)
    s = store.session()
    with s.transaction() as tx:
        tx.upsert_nodes("Item", [{"k": "c", "v": 3}])
    assert s.neighbors("Item", "a", "Link") == []
    store.close()

    _drop_tables(path)
    store = _open(path)
    try:
        s = store.session()
        assert s.get("Item", "c")["v"] == 3
        assert [r.key for r in s.neighbors("Item", "a", "Link")] == [], "edge a->b came back as a->c"
        assert s.stats()["edges"] == {"Link": 0}
    finally:
        store.close()
