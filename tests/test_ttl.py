"""TTL policies and per-node deadlines: expiry is part of visibility, the sweeper deletes through the WAL.

The store's clock is the config's (`StoreConfig(clock=...)`), so time moves when a test says so; the
background sweeper is off (`ttl_sweep_rows_per_s=0`) except where it is the subject.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import knowledge
from knowledge.config import StoreConfig
from knowledge.errors import InvalidArgument, NotFound, SchemaError, UnknownType
from knowledge.storage.ops import OpKind, decode_ops
from knowledge.storage.ttl import parse_duration

T0 = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def open_store(path, clock, **config):
    return knowledge.open(str(path), config=StoreConfig(clock=clock, ttl_sweep_rows_per_s=0, **config))


def logs_schema(store):
    store.define_node_type("AgentLog", key="name", properties={
        "created_at": "timestamp", "msg": "text", "emb": {"type": "vector[4]", "metric": "cosine"},
        "secret": {"type": "str", "hidden": True}})
    store.define_node_type("Person", key="name")
    store.define_edge_type("WROTE", source="Person", target="AgentLog")


def names(table):
    return sorted(table.column("name").to_pylist())


def vec(i):
    return [1.0, float(i % 7), float(i % 3), 0.5]


# -- durations and errors ----------------------------------------------------------------------------------
def test_durations():
    assert parse_duration("7d") == 7 * 86400 and parse_duration("12h") == 43200
    assert parse_duration("30m") == 1800 and parse_duration("90s") == 90 and parse_duration("90") == 90
    assert parse_duration(dt.timedelta(hours=1)) == 3600 and parse_duration(2.5) == 2.5
    for bad in ("7x", "", "-1d", 0, -5, True, None, [1]):
        with pytest.raises(InvalidArgument, match="expire_after"):
            parse_duration(bad)


def test_bad_policies_are_refused_and_change_nothing(tmp_path):
    clock = Clock()
    with open_store(tmp_path / "s", clock) as store:
        logs_schema(store)
        lsn = store.memory_lsn
        with pytest.raises(UnknownType, match="Nope"):
            store.set_ttl("Nope", "7d")
        with pytest.raises(InvalidArgument, match="expire_after"):
            store.set_ttl("AgentLog", "soon")
        with pytest.raises(SchemaError, match="no property 'when'"):
            store.set_ttl("AgentLog", "7d", on="when")
        with pytest.raises(SchemaError, match="msg"):
            store.set_ttl("AgentLog", "7d", on="msg")  # a text property is no clock
        with pytest.raises(InvalidArgument, match="_expires_at"):
            store.session().transaction().upsert_nodes("AgentLog", [{"name": "a", "_expires_at": "tomorrow"}])
        assert store.memory_lsn == lsn and store.ttl() == {}
        assert store.set_ttl("AgentLog", None) == lsn  # removing no policy writes nothing


# -- expiry is visibility --------------------------------------------------------------------------------
def test_policy_from_last_write_hides_before_the_sweep(tmp_path):
    clock = Clock()
    with open_store(tmp_path / "s", clock) as store:
        logs_schema(store)
        session = store.session()
        session.transaction().upsert_nodes("AgentLog", [
            {"name": f"l{i}", "msg": f"agent step {i}", "emb": vec(i)} for i in range(6)]).upsert_nodes(
            "Person", [{"name": "ada"}]).upsert_edges("WROTE", [{"src": "ada", "dst": f"l{i}"} for i in range(6)]).commit()
        store.set_ttl("AgentLog", expire_after="1h")
        assert store.ttl()["AgentLog"] == {"kind": "node", "expire_after_s": 3600.0, "on": None, "set_at": T0}
        clock.now = T0 + 1800
        session.transaction().upsert_nodes("AgentLog", [{"name": "l0", "msg": "agent step 0 again", "emb": vec(0)}]).commit()
        clock.now = T0 + 3600  # l1..l5 counted from the policy's setting (written before it): due now
        assert names(session.scan("AgentLog")) == ["l0"]
        assert session.count("AgentLog") == 1 and session.stats()["nodes"]["AgentLog"] == 1
        assert store.stats()["nodes"]["AgentLog"] == 1 and store.stats()["edges"]["WROTE"] == 1
        with pytest.raises(NotFound):
            session.get("AgentLog", "l3")
        assert [r.key for r in session.neighbors("Person", "ada", "WROTE")] == ["l0"]
        assert session.search(vec(3), k=10, type="AgentLog").column("_key").to_pylist() == ["l0"]
        assert session.keyword_search("agent step", k=10).column("_key").to_pylist() == ["l0"]
        assert session.get_many("AgentLog", ["l0", "l1"]).column("name").to_pylist() == ["l0"]
        assert store.stats()["ttl"]["expired_pending"] == 5
        clock.now = T0 + 1800 + 3600  # l0's own clock started at its rewrite
        assert session.count("AgentLog") == 0
        assert store.stats()["ttl"]["sweeper_lag_s"] == pytest.approx(1800)


def test_on_property_and_explicit_deadlines(tmp_path):
    clock = Clock()
    with open_store(tmp_path / "s", clock) as store:
        logs_schema(store)
        store.set_ttl("AgentLog", "7d", on="created_at")
        created = dt.datetime.fromtimestamp(T0, dt.UTC)
        session = store.session()
        session.transaction().upsert_nodes("AgentLog", [
            {"name": "old", "created_at": created - dt.timedelta(days=8)},
            {"name": "new", "created_at": created},
            {"name": "undated"},  # no created_at: the policy has no clock for it
            {"name": "pinned", "created_at": created - dt.timedelta(days=30), "_expires_at": T0 + 60},
        ]).commit()
        assert names(session.scan("AgentLog")) == ["new", "pinned", "undated"]
        clock.now = T0 + 61
        assert names(session.scan("AgentLog")) == ["new", "undated"]
        # an Arrow table with an _expires_at column (timestamps), and a rewrite that drops the deadline
        table = pa.table({"name": ["a", "b"], "_expires_at": pa.array(
            [created + dt.timedelta(hours=1), None], type=pa.timestamp("us", tz="UTC"))})
        session.transaction().upsert_nodes("AgentLog", table).commit()
        assert names(session.scan("AgentLog")) == ["a", "b", "new", "undated"]
        clock.now = T0 + 3601
        assert names(session.scan("AgentLog")) == ["b", "new", "undated"]
        session.transaction().upsert_nodes("AgentLog", [{"name": "a"}]).commit()  # rewritten: no deadline now
        assert names(session.scan("AgentLog")) == ["a", "b", "new", "undated"]
        clock.now = T0 + 7 * 86400
        assert names(session.scan("AgentLog")) == ["a", "b", "undated"]


def test_non_admins_never_see_expired_or_hidden(tmp_path):
    clock = Clock()
    with open_store(tmp_path / "s", clock) as store:
        logs_schema(store)
        store.create_principal("alice", read=["public"])
        store.session().transaction().upsert_nodes("AgentLog", [
            {"name": "pub-live", "msg": "shared note", "emb": vec(1), "secret": "s1", "_labels": ["public"]},
            {"name": "pub-expiring", "msg": "shared note", "emb": vec(2), "secret": "s2", "_labels": ["public"],
             "_expires_at": T0 + 10},
            {"name": "secret-live", "msg": "shared note", "emb": vec(3), "_labels": ["hr"]},
        ]).commit()
        alice = store.session("alice")
        assert names(alice.scan("AgentLog")) == ["pub-expiring", "pub-live"]
        clock.now = T0 + 10
        for session, expected in ((alice, ["pub-live"]), (store.session(), ["pub-live", "secret-live"])):
            assert names(session.scan("AgentLog")) == expected
            assert sorted(session.keyword_search("shared note", k=10).column("_key").to_pylist()) == expected
            assert sorted(session.search(vec(2), k=10, type="AgentLog").column("_key").to_pylist()) == expected
            assert session.count("AgentLog") == len(expected)
        with pytest.raises(NotFound) as expired:
            alice.get("AgentLog", "pub-expiring")
        with pytest.raises(NotFound) as absent:
            alice.get("AgentLog", "never-written")
        assert str(expired.value).replace("pub-expiring", "K") == str(absent.value).replace("never-written", "K")
        assert "secret" not in alice.get("AgentLog", "pub-live") and "secret" not in alice.scan("AgentLog").column_names
        store.sweep_expired()
        assert names(alice.scan("AgentLog")) == ["pub-live"]


# -- the sweeper -------------------------------------------------------------------------------------------
def test_sweeper_deletes_through_the_wal_with_edges_and_orphaned_entities(tmp_path):
    from knowledge.graphrag import schema as rag

    clock = Clock()
    with open_store(tmp_path / "s", clock) as store:
        store.apply_schema(rag.graphrag_schema(4))
        session = store.session()
        session.transaction().upsert_nodes("Chunk", [
            {"chunk_id": "c1", "text": "Ada met Bob", "embedding": vec(1)},
            {"chunk_id": "c2", "text": "Bob met Cy", "embedding": vec(2)},
        ]).upsert_nodes("Entity", [{"name": n, "embedding": vec(i)} for i, n in enumerate(["Ada", "Bob", "Cy"])]).commit()
        session.transaction().upsert_edges("MENTIONS", [{"src": "c1", "dst": "Ada"}, {"src": "c1", "dst": "Bob"},
                                                       {"src": "c2", "dst": "Bob"}, {"src": "c2", "dst": "Cy"}]
                                           ).upsert_edges("RELATED", [{"src": "Ada", "dst": "Bob"}]).commit()
        store.set_ttl("Chunk", "1d")
        before = store.wal.last_lsn
        clock.now = T0 + 86400
        assert store.stats()["edges"]["MENTIONS"] == 0  # the chunks are gone for readers already
        done = store.sweep_expired()
        assert done == {"nodes": 2, "entities": 3, "edges": 0, "lsn": before + 1, "records": 1}
        assert store.stats()["nodes"] == {"Document": 0, "Chunk": 0, "Entity": 0}
        assert store.stats()["ttl"]["expired_total"] == 5 and store.stats()["ttl"]["expired_pending"] == 0
        (record,) = list(store.wal.read_from(before + 1))
        ops = decode_ops(record.payload, record.lsn)
        assert {(op.kind, op.name) for op in ops} == {(OpKind.DELETE_NODES, "Chunk"), (OpKind.DELETE_NODES, "Entity")}
        assert store.sweep_expired()["records"] == 0
        store.wait_applied()
        cursor = store.tables.cursor()
        assert cursor.execute('SELECT count(*) FROM "e_MENTIONS"').fetchone()[0] == 0
        assert cursor.execute('SELECT count(*) FROM "e_RELATED"').fetchone()[0] == 0
        cursor.close()


def test_entity_still_mentioned_is_kept(tmp_path):
    clock = Clock()
    with open_store(tmp_path / "s", clock) as store:
        from knowledge.graphrag import schema as rag

        store.apply_schema(rag.graphrag_schema(4))
        session = store.session()
        session.transaction().upsert_nodes("Chunk", [{"chunk_id": "old", "_expires_at": T0 + 1},
                                                     {"chunk_id": "new"}]).upsert_nodes(
            "Entity", [{"name": "Ada"}, {"name": "Bob"}]).commit()
        session.transaction().upsert_edges("MENTIONS", [{"src": "old", "dst": "Ada"}, {"src": "old", "dst": "Bob"},
                                                       {"src": "new", "dst": "Bob"}]).commit()
        clock.now = T0 + 1
        assert store.sweep_expired()["entities"] == 1
        assert names(session.scan("Entity")) == ["Bob"]


def test_graphrag_names_match_the_sweeper():
    from knowledge.graphrag import schema as rag
    from knowledge.storage import sweeper

    assert (sweeper.ENTITY, sweeper.CHUNK, sweeper.MENTIONS) == (rag.ENTITY, rag.CHUNK, rag.MENTIONS)


def test_sweeps_are_batched(tmp_path):
    clock = Clock()
    with open_store(tmp_path / "s", clock, ttl_sweep_batch_rows=10) as store:
        logs_schema(store)
        store.session().transaction().upsert_nodes("AgentLog", [{"name": f"l{i}"} for i in range(35)]).commit()
        store.set_ttl("AgentLog", "1s")
        clock.now += 1
        first = store.wal.last_lsn
        done = store.sweep_expired()
        assert (done["nodes"], done["records"], done["lsn"]) == (35, 4, first + 4)
        sizes = [sum(op.table.num_rows for op in decode_ops(r.payload, r.lsn)) for r in store.wal.read_from(first + 1)]
        assert sizes == [10, 10, 10, 5]


def test_edge_type_policies(tmp_path):
    clock = Clock()
    with open_store(tmp_path / "s", clock) as store:
        store.define_node_type("P", key="name")
        store.define_edge_type("SAW", source="P", target="P", properties={"at": "timestamp"})
        store.define_edge_type("KNOWS", source="P", target="P")
        session = store.session()
        session.transaction().upsert_nodes("P", [{"name": n} for n in "abc"]).upsert_edges("KNOWS", [
            {"src": "a", "dst": "b"}]).commit()
        store.set_ttl("KNOWS", "1h")  # from the last write (or from the policy, for edges written before it)
        store.set_ttl("SAW", "1d", on="at")
        at = dt.datetime.fromtimestamp(T0, dt.UTC)
        clock.now = T0 + 1800
        session.transaction().upsert_edges("KNOWS", [{"src": "b", "dst": "c"}]).upsert_edges("SAW", [
            {"src": "a", "dst": "c", "at": at - dt.timedelta(days=2)}, {"src": "b", "dst": "c", "at": at}]).commit()
        clock.now = T0 + 3600
        assert store.sweep_expired()["edges"] == 2  # a->b KNOWS, the old SAW
        assert [r.key for r in session.neighbors("P", "b", "KNOWS")] == ["c"]
        assert [r.key for r in session.neighbors("P", "a", "SAW")] == []
        clock.now = T0 + 1800 + 3600
        assert store.sweep_expired()["edges"] == 1
        assert session.stats()["edges"] == {"SAW": 1, "KNOWS": 0}
        assert store.stats()["nodes"]["P"] == 3  # edge expiry leaves the nodes


def test_background_sweeper(tmp_path):
    clock = Clock()
    config = StoreConfig(clock=clock, ttl_sweep_interval_s=0.05, ttl_sweep_rows_per_s=1e6)
    with knowledge.open(str(tmp_path / "s"), config=config) as store:
        logs_schema(store)
        store.session().transaction().upsert_nodes("AgentLog", [{"name": f"l{i}"} for i in range(20)]).commit()
        store.set_ttl("AgentLog", "1m")
        clock.now += 60
        deadline = time.monotonic() + 30
        while store.stats()["ttl"]["expired_total"] < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.stats()["ttl"]["expired_total"] == 20
        assert store.stats()["nodes"]["AgentLog"] == 0 and store.directory.count("AgentLog") == 0


def test_policy_is_a_wal_record_that_survives_reopen_recover_and_backup(tmp_path):
    clock = Clock()
    with open_store(tmp_path / "s", clock) as store:
        logs_schema(store)
        lsn = store.set_ttl("AgentLog", "2h", on="created_at")
        (record,) = list(store.wal.read_from(lsn, until_lsn=lsn))
        (op,) = decode_ops(record.payload, record.lsn)
        assert (op.kind, op.name, op.document["expire_after_s"]) == (OpKind.META, "ttl:AgentLog", 7200.0)
        store.session().transaction().upsert_nodes("AgentLog", [{"name": "x", "_expires_at": T0 + 5}]).commit()
        store.backup(str(tmp_path / "backup"))
    expected = {"AgentLog": {"kind": "node", "expire_after_s": 7200.0, "on": "created_at", "set_at": T0}}
    knowledge.recover(str(tmp_path / "s"), str(tmp_path / "recovered"))
    knowledge.restore(str(tmp_path / "backup"), str(tmp_path / "restored"))
    for where in ("s", "recovered", "restored"):
        clock.now = T0
        with open_store(tmp_path / where, clock) as store:
            assert store.ttl() == expected, where
            assert names(store.session().scan("AgentLog")) == ["x"]
            clock.now = T0 + 5
            assert names(store.session().scan("AgentLog")) == [], where


# -- crash and reopen ------------------------------------------------------------------------------------------
CHILD = textwrap.dedent("""
    import sys
    import knowledge
    from knowledge.config import StoreConfig
    from knowledge.storage.sweeper import sweep_once

    path, phase, now = sys.argv[1], sys.argv[2], float(sys.argv[3])
    store = knowledge.open(path, config=StoreConfig(clock=lambda: now, ttl_sweep_rows_per_s=0))
    session = store.session()
    if phase == "write":
        store.define_node_type("Log", key="k", properties={"msg": "text"})
        store.set_ttl("Log", "100s")
        print("ready", flush=True)
        i = 0
        while True:
            session.transaction().upsert_nodes("Log", [{"k": f"a{i}", "msg": "short"},
                                                      {"k": f"b{i}", "msg": "long", "_expires_at": now + 10_000}]).commit()
            print(i, flush=True)
            i += 1
    else:
        print("ready", flush=True)
        while True:
            done = sweep_once(store.engine, rows_max=7)
            print(done["nodes"], flush=True)
            if not done["lsn"]:
                session.transaction().upsert_nodes("Log", [{"k": "late", "msg": "x"}]).commit()
""")


def _run_child(path, phase, now, lines_before_kill):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), phase, str(now)], stdout=subprocess.PIPE,
                            text=True)
    acked = []
    try:
        assert proc.stdout.readline().strip() == "ready"
        for _ in range(lines_before_kill):
            line = proc.stdout.readline()
            assert line, "the child died"
            acked.append(line.strip())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return acked


def visible_keys(path, now):
    clock = Clock(now)
    with open_store(path, clock) as store:
        return set(store.session().scan("Log", columns=["k"]).column("k").to_pylist())


def test_expiry_survives_sigkill_and_reopen(tmp_path):
    path = tmp_path / "s"
    acked = _run_child(path, "write", T0, 40)
    written = int(acked[-1]) + 1  # rows acknowledged before the kill
    before = visible_keys(path, T0 + 99)
    assert {f"a{i}" for i in range(written)} <= before and {f"b{i}" for i in range(written)} <= before
    after = visible_keys(path, T0 + 100)  # the a* rows expired, though nothing deleted them yet
    assert not any(k.startswith("a") for k in after) and {f"b{i}" for i in range(written)} <= after
    _run_child(path, "sweep", T0 + 100, 5)  # killed in the middle of sweeping (7 rows per record)
    assert not any(k.startswith("a") for k in visible_keys(path, T0 + 100))
    clock = Clock(T0 + 100)
    with open_store(path, clock) as store:
        store.sweep_expired()
        assert not any(k.startswith("a") for k in store.session().scan("Log", columns=["k"]).column("k").to_pylist())
        assert store.directory.count("Log") == len(visible_keys_in(store))
        store.checkpoint()
    assert not any(k.startswith("a") for k in visible_keys(path, T0 + 100))
    assert visible_keys(path, T0 + 10_000) <= {"late"}  # the b* rows too, at their own deadline


def visible_keys_in(store):
    return store.session().scan("Log", columns=["k"]).column("k").to_pylist()


# -- differential: expiry reads like deletion -----------------------------------------------------------------
def _world(store, rng, expire):
    """Write the same rows into `store`; `expire(key)` says whether the row gets a deadline (T0 + 10)."""
    logs_schema(store)
    store.create_principal("alice", read=["public"])
    rows = []
    for i in range(60):
        row = {"name": f"l{i}", "msg": f"note {' '.join(rng.choice(['alpha', 'beta', 'gamma', 'delta'], 3))}",
               "emb": [float(x) for x in rng.normal(size=4)], "secret": f"s{i}",
               "_labels": [rng.choice(["public", "hr"])]}
        if expire(row["name"]):
            row["_expires_at"] = T0 + 10
        rows.append(row)
    session = store.session()
    session.transaction().upsert_nodes("AgentLog", rows).upsert_nodes(
        "Person", [{"name": f"p{i}", "_labels": ["public"]} for i in range(5)]).commit()
    session.transaction().upsert_edges("WROTE", [{"src": f"p{i % 5}", "dst": f"l{i}"} for i in range(60)]).commit()


def _reads(store, principal):
    session = store.session(principal)
    out = {"scan": session.scan("AgentLog").to_pylist(), "count": session.count(),
           "stats": {k: v for k, v in session.stats().items() if k != "lsn"},
           "neighbors": [[r.key for r in session.neighbors("Person", f"p{i}", "WROTE")] for i in range(5)],
           "search": session.search([1.0, 0.2, -0.3, 0.1], k=8, type="AgentLog").select(["_key", "_score"]).to_pylist(),
           "keyword": session.keyword_search("alpha gamma", k=8).select(["_key", "_score"]).to_pylist(),
           "edges": session.edges("WROTE").select(["_src", "_dst"]).to_pylist(),
           "traverse": session.traverse("Person", "p0", "WROTE", depth=2).to_pylist()}
    gets = {}
    for i in range(60):
        try:
            gets[i] = session.get("AgentLog", f"l{i}")
        except NotFound as exc:
            gets[i] = str(exc)
    out["get"] = gets
    return out


def test_a_store_with_expiry_reads_like_one_with_those_rows_deleted(tmp_path):
    rng_seed = 7
    expiring = {f"l{i}" for i in range(60) if i % 3 == 0 or i % 7 == 1}
    clock = Clock()
    expired = open_store(tmp_path / "expired", clock)
    deleted = open_store(tmp_path / "deleted", clock)
    try:
        _world(expired, np.random.default_rng(rng_seed), lambda k: k in expiring)
        _world(deleted, np.random.default_rng(rng_seed), lambda k: False)
        clock.now = T0 + 10
        deleted.session().transaction().delete_nodes("AgentLog", sorted(expiring)).commit()
        for step in ("before the sweep", "swept", "checkpointed", "reopened"):
            if step == "swept":
                assert expired.sweep_expired()["nodes"] == len(expiring)
            elif step == "checkpointed":
                expired.checkpoint()
                deleted.checkpoint()
            elif step == "reopened":
                expired.close()
                expired = open_store(tmp_path / "expired", clock)
            for principal in (None, "alice"):
                assert _reads(expired, principal) == _reads(deleted, principal), (step, principal)
    finally:
        expired.close()
        deleted.close()


# -- the sweeper against a reference model --------------------------------------------------------------------
KEYS = [f"k{i}" for i in range(6)]
OPS = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(KEYS), st.one_of(st.none(), st.integers(-5, 50))),
    st.tuples(st.just("delete"), st.sampled_from(KEYS)),
    st.tuples(st.just("advance"), st.integers(0, 40)),
    st.tuples(st.just("sweep"), st.integers(1, 4)),
    st.tuples(st.just("policy"), st.one_of(st.none(), st.integers(1, 60))),
    st.tuples(st.just("reopen")),
)


class Model:
    """What should be visible: key -> (last write time, explicit deadline or None); the type's policy."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[float, float | None]] = {}
        self.policy: tuple[float, float] | None = None  # (expire_after_s, set_at)

    def deadline(self, key: str) -> float:
        written, explicit = self.rows[key]
        if explicit is not None:
            return explicit
        if self.policy is None:
            return float("inf")
        ttl, set_at = self.policy
        return max(written, set_at) + ttl

    def visible(self, now: float) -> set[str]:
        return {key for key in self.rows if self.deadline(key) > now}

    def sweep(self, now: float) -> None:
        self.rows = {key: row for key, row in self.rows.items() if self.deadline(key) > now}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(OPS, max_size=25))
def test_sweeper_against_a_reference_model(tmp_path_factory, ops):
    path = tmp_path_factory.mktemp("model") / "s"
    clock = Clock()
    model = Model()
    store = open_store(path, clock, fsync=False)
    try:
        store.define_node_type("Item", key="name", properties={"n": "int"})
        for op in ops:
            session = store.session()
            if op[0] == "put":
                row = {"name": op[1], "n": 1}
                if op[2] is not None:
                    row["_expires_at"] = clock.now + op[2]
                if model.rows.get(op[1]) is not None and model.deadline(op[1]) <= clock.now:
                    model.rows.pop(op[1])  # expired: reads as absent, and is replaced like an absent one
                session.transaction().upsert_nodes("Item", [row]).commit()
                model.rows[op[1]] = (clock.now, None if op[2] is None else clock.now + op[2])
            elif op[0] == "delete":
                session.transaction().delete_nodes("Item", [op[1]]).commit()
                model.rows.pop(op[1], None)
            elif op[0] == "advance":
                clock.now += op[1]
            elif op[0] == "sweep":
                store.sweep_expired(rows_max=op[1])
                model.sweep(clock.now)
                assert store.directory.count("Item") == len(model.rows)
            elif op[0] == "policy":
                store.set_ttl("Item", op[1])
                if op[1] is None:
                    model.policy = None
                else:
                    model.policy = (float(op[1]), model.policy[1] if model.policy else clock.now)
            else:
                store.close()
                store = open_store(path, clock, fsync=False)
            seen = set(store.session().scan("Item", columns=["name"]).column("name").to_pylist())
            assert seen == model.visible(clock.now), op
            assert store.session().count("Item") == len(seen)
    finally:
        store.close()


# -- CLI and metrics -----------------------------------------------------------------------------------------
def test_cli_ttl_verbs(tmp_path, capsys):
    import json

    from knowledge.cli import main

    path = str(tmp_path / "s")
    with knowledge.open(path) as store:
        logs_schema(store)
        store.session().transaction().upsert_nodes("AgentLog", [{"name": "x", "_expires_at": 1.0}]).commit()
    assert main(["ttl", "set", "--data", path, "AgentLog", "7d", "--on", "created_at"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["policies"]["AgentLog"]["expire_after_s"] == 604800 and shown["expired_pending"] == 1
    assert main(["ttl", "show", path]) == 0
    assert json.loads(capsys.readouterr().out)["policies"]["AgentLog"]["on"] == "created_at"
    assert main(["ttl", "sweep", path, "--checkpoint"]) == 0
    swept = json.loads(capsys.readouterr().out)
    assert swept["nodes"] == 1 and swept["records"] == 1
    assert main(["ttl", "drop", path, "AgentLog"]) == 0
    assert json.loads(capsys.readouterr().out)["policies"] == {}
    assert main(["ttl", "set", path, "AgentLog", "soon"]) == 1
    assert "expire_after" in capsys.readouterr().err


def test_cli_ttl_verbs_through_a_server(tmp_path, capsys):
    """`knowledge ttl ... --server ADDR --token T` while a server holds the store (the CLI cannot open it)."""
    import json

    from remote_fixture import ServedStore

    from knowledge.cli import main

    served = ServedStore(str(tmp_path / "s"))
    try:
        logs_schema(served.store)
        served.store.session().transaction().upsert_nodes("AgentLog", [{"name": "x", "_expires_at": 1.0}]).commit()
        remote = ["--server", served.address, "--token", served.token]
        assert main(["ttl", "set", "AgentLog", "7d", "--on", "created_at", *remote]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["server"] == served.address and shown["policies"]["AgentLog"]["expire_after_s"] == 604800
        assert served.store.ttl()["AgentLog"]["on"] == "created_at"  # set in the served store itself
        assert main(["ttl", "show", *remote]) == 0
        assert json.loads(capsys.readouterr().out)["expired_pending"] == 1
        assert main(["ttl", "sweep", "--checkpoint", *remote]) == 0
        assert json.loads(capsys.readouterr().out)["nodes"] == 1
        assert served.store.session().count("AgentLog") == 0
        assert main(["ttl", "drop", "AgentLog", *remote]) == 0
        assert json.loads(capsys.readouterr().out)["policies"] == {}
        reader = served.store.issue_token(served.store.create_principal("reader", read=["public"]).name)
        assert main(["ttl", "show", "--server", served.address, "--token", reader]) == 1  # admins only, as embedded
        assert "admin" in capsys.readouterr().err
        assert main(["ttl", "show", str(tmp_path / "s"), *remote]) == 1
        assert "not both" in capsys.readouterr().err
    finally:
        served.close()


def test_metrics_report_expiry_and_sweeper_lag(tmp_path):
    from knowledge.metrics import Metrics

    clock = Clock()
    with open_store(tmp_path / "s", clock) as store:
        logs_schema(store)
        store.session().transaction().upsert_nodes("AgentLog", [{"name": f"l{i}"} for i in range(4)]).commit()
        store.set_ttl("AgentLog", "10s")
        clock.now += 25
        metrics = Metrics()
        metrics.update_from_store(store)
        text = metrics.exposition().decode()
        assert "knowledge_ttl_expired_pending_rows 4.0" in text
        assert "knowledge_ttl_sweeper_lag_seconds 15.0" in text
        store.sweep_expired()
        metrics.update_from_store(store)
        text = metrics.exposition().decode()
        assert 'knowledge_ttl_expired_rows_total{kind="nodes"} 4.0' in text
        assert "knowledge_ttl_expired_pending_rows 0.0" in text and "knowledge_ttl_sweeper_lag_seconds 0.0" in text
        assert 'knowledge_storage_bytes{state="live",structure="tables"}' in text


def test_a_writer_replaces_an_expired_node_before_the_sweep(tmp_path):
    clock = Clock()
    with open_store(tmp_path / "s", clock) as store:
        logs_schema(store)
        store.create_principal("agent", read=["agent"], write=["agent"])
        agent = store.session("agent")
        agent.transaction().upsert_nodes("AgentLog", [{"name": "summary", "msg": "v1", "_labels": ["agent"],
                                                       "_expires_at": T0 + 5}]).commit()
        clock.now = T0 + 5
        with pytest.raises(NotFound):
            agent.get("AgentLog", "summary")
        agent.transaction().upsert_nodes("AgentLog", [{"name": "summary", "msg": "v2", "_labels": ["agent"]}]).commit()
        assert agent.get("AgentLog", "summary")["msg"] == "v2"  # rewritten: no deadline of its own any more
        assert store.sweep_expired()["nodes"] == 0
        agent.transaction().upsert_nodes("AgentLog", [{"name": "other", "_labels": ["agent"],
                                                       "_expires_at": T0 + 6}]).commit()
        clock.now = T0 + 6
        agent.transaction().delete_nodes("AgentLog", ["other"]).commit()  # deleting an expired node: fine too
        assert store.directory.count("AgentLog") == 1


def test_expires_at_from_an_ingested_file(tmp_path, capsys):
    import json

    from knowledge.cli import main

    path = str(tmp_path / "s")
    with knowledge.open(path) as store:
        logs_schema(store)
    rows = tmp_path / "logs.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in [
        {"name": "gone", "_expires_at": "2001-01-01T00:00:00Z"}, {"name": "kept", "_expires_at": "2999-01-01T00:00:00+00:00"},
        {"name": "plain"}]) + "\n")
    assert main(["ingest", path, "AgentLog", str(rows), "--quiet"]) == 0
    with knowledge.open(path) as store:
        assert names(store.session().scan("AgentLog")) == ["kept", "plain"]
    rows.write_text(json.dumps({"name": "bad", "_expires_at": "next week"}) + "\n")
    assert main(["ingest", path, "AgentLog", str(rows), "--quiet"]) == 1
    assert "_expires_at" in capsys.readouterr().err
