"""The lifecycle Store methods (set_ttl, ttl, sweep_expired, wait_applied, visibility) through
knowledge.connect(), against the embedded store: the same results, result types and exception classes
(and messages) on both back-ends, admin-only where the server's Store-level calls are, and NotPrimary on a
replica. The store's clock is the config's, moved by hand; the background sweeper is off."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from remote_fixture import ServedStore, open_backend

import knowledge
from knowledge.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotPrimary,
    PermissionDenied,
    SchemaError,
    UnknownType,
)
from knowledge.server import KnowledgeServer, ReplicaRole, ServerConfig

T0 = 1_700_000_000.0
DAY = 86_400.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def config(clock):
    return knowledge.StoreConfig(clock=clock, ttl_sweep_rows_per_s=0)


def declare(store):
    store.define_node_type("AgentLog", key="name", properties={"created_at": "timestamp", "msg": "text",
                                                               "n": "int"})
    store.define_node_type("Person", key="name")
    store.define_edge_type("WROTE", source="Person", target="AgentLog")


def stamp(seconds):
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


@pytest.fixture(params=["embedded", "remote"])
def lifecycle(request, tmp_path):
    """(store, clock): the embedded Store, or a client of a real server over it (as the admin "root")."""
    clock = Clock()
    with open_backend(request.param, str(tmp_path / "ttl.store"), config(clock)) as store:
        declare(store)
        yield store, clock


def names(store, type_name="AgentLog"):
    return sorted(store.session().scan(type_name, columns=["name"]).column("name").to_pylist())


def test_set_ttl_ttl_and_sweep_expired(lifecycle):
    store, clock = lifecycle
    lsn = store.set_ttl("AgentLog", "7d", on="created_at")
    assert isinstance(lsn, int) and lsn == store.memory_lsn
    assert store.ttl() == {"AgentLog": {"kind": "node", "expire_after_s": 7 * DAY, "on": "created_at", "set_at": T0}}
    with store.session().transaction() as tx:
        tx.upsert_nodes("AgentLog", [{"name": "old", "created_at": stamp(T0 - 8 * DAY), "msg": "stale"},
                                     {"name": "new", "created_at": stamp(T0), "msg": "fresh"},
                                     {"name": "pinned", "created_at": stamp(T0), "_expires_at": T0 + 3600}])
        tx.upsert_nodes("Person", [{"name": "ada"}])
        tx.upsert_edges("WROTE", [{"src": "ada", "dst": "old"}, {"src": "ada", "dst": "new"}])
    assert names(store) == ["new", "pinned"]  # expired rows read as absent before any sweep
    clock.now += 2 * 3600  # past the pinned row's own deadline
    assert names(store) == ["new"]
    assert store.stats()["ttl"]["expired_pending"] == 2
    swept = store.sweep_expired(rows_max=1)
    assert swept == {"nodes": 2, "entities": 0, "edges": 0, "records": 2, "lsn": store.memory_lsn}
    assert all(type(value) is int for value in swept.values())
    assert store.sweep_expired()["nodes"] == 0
    assert store.stats()["ttl"]["expired_total"] == 2
    assert store.session().count("AgentLog") == 1 and len(store.session().edges("WROTE")) == 1

    clock.now += 10
    store.set_ttl("WROTE", 3600)  # an int of seconds, on an edge type
    store.set_ttl("Person", dt.timedelta(hours=12))
    store.set_ttl("AgentLog", 1.5 * DAY, on="created_at")  # a float; a replaced policy keeps its set_at
    assert store.ttl() == {
        "AgentLog": {"kind": "node", "expire_after_s": 1.5 * DAY, "on": "created_at", "set_at": T0},
        "Person": {"kind": "node", "expire_after_s": 12 * 3600.0, "on": None, "set_at": T0 + 2 * 3600 + 10},
        "WROTE": {"kind": "edge", "expire_after_s": 3600.0, "on": None, "set_at": T0 + 2 * 3600 + 10}}
    clock.now += 2 * 3600
    assert store.sweep_expired()["edges"] == 1  # an edge-type policy: its edges go with the sweep
    lsn = store.set_ttl("WROTE", None)
    assert "WROTE" not in store.ttl() and lsn == store.memory_lsn
    assert store.set_ttl("WROTE", None) == lsn  # removing no policy writes nothing


BAD_SET_TTL = [
    (("Nope", "7d"), {}, UnknownType),
    ((5, "7d"), {}, InvalidArgument),
    (("AgentLog", -5), {}, InvalidArgument),
    (("AgentLog", 0), {}, InvalidArgument),
    (("AgentLog", -1.5), {}, InvalidArgument),
    (("AgentLog", float("nan")), {}, InvalidArgument),
    (("AgentLog", float("inf")), {}, InvalidArgument),
    (("AgentLog", dt.timedelta(days=-1)), {}, InvalidArgument),
    (("AgentLog", "7 fortnights"), {}, InvalidArgument),
    (("AgentLog", "-7d"), {}, InvalidArgument),
    (("AgentLog", True), {}, InvalidArgument),
    (("AgentLog", [7]), {}, InvalidArgument),
    (("AgentLog", np.int64(7)), {}, InvalidArgument),
    (("AgentLog", "7d"), {"on": "nope"}, SchemaError),
    (("AgentLog", "7d"), {"on": "msg"}, SchemaError),  # a text property: no timestamp to count from
    (("AgentLog", "7d"), {"on": 5}, SchemaError),
    (("AgentLog", None), {"on": "created_at"}, InvalidArgument),
    (("Nope", True), {"on": 5}, UnknownType),  # the type is checked first, on both
]


@pytest.mark.parametrize(("args", "kwargs", "error"), BAD_SET_TTL)
def test_bad_set_ttl_raises_the_same_class(lifecycle, args, kwargs, error):
    store, _ = lifecycle
    lsn = store.memory_lsn
    with pytest.raises(error):
        store.set_ttl(*args, **kwargs)
    assert store.ttl() == {} and store.memory_lsn == lsn


@pytest.mark.parametrize("rows_max", [0, -1, 1.5, True, "3"])
def test_bad_sweep_expired_raises_invalid_argument(lifecycle, rows_max):
    store, _ = lifecycle
    with pytest.raises(InvalidArgument, match="rows_max must be a positive int"):
        store.sweep_expired(rows_max=rows_max)


def _outcome(call):
    try:
        return ("ok", call())
    except knowledge.KnowledgeError as exc:
        return (type(exc).__name__, str(exc))


def test_errors_are_the_same_class_and_message_on_both(tmp_path):
    """Each bad call, embedded and remote, side by side: the same exception class and the same message."""
    outcomes = {}
    for kind in ("embedded", "remote"):
        with open_backend(kind, str(tmp_path / f"{kind}.store"), config(Clock())) as store:
            declare(store)
            calls = [lambda a=args, k=kwargs: store.set_ttl(*a, **k) for args, kwargs, _ in BAD_SET_TTL]
            calls += [lambda r=rows_max: store.sweep_expired(rows_max=r) for rows_max in (0, -1, 1.5, True, "3")]
            calls += [lambda: store.wait_applied("3"), lambda: store.wait_applied(True)]
            calls += [lambda: store.visibility("root"), lambda: store.visibility(None)]
            outcomes[kind] = [_outcome(call) for call in calls]
    assert outcomes["embedded"] == outcomes["remote"]
    assert all(name != "ok" for name, _ in outcomes["remote"])
    assert outcomes["remote"][0] == ("UnknownType", "no node or edge type 'Nope' to set a TTL on [type 'Nope']")
    assert [name for name, _ in outcomes["remote"][:len(BAD_SET_TTL)]] == [e.__name__ for _, _, e in BAD_SET_TTL]


def test_wait_applied_and_visibility(lifecycle):
    store, _ = lifecycle
    lsn = store.session().transaction().upsert_nodes("AgentLog", [
        {"name": "a", "_labels": ["public"]}, {"name": "b", "_labels": ["secret"]}]).commit()
    assert store.wait_applied() is None and store.wait_applied(lsn) is None and store.wait_applied(-1) is None
    reader = store.create_principal("reader", read=["public"])
    bits = store.visibility(reader)
    assert bits.dtype == bool and int(np.count_nonzero(bits)) == 1
    visible = store.session("reader").visible()  # the embedded Store's bitmap may be longer, padded with False
    assert np.flatnonzero(bits).tolist() == np.flatnonzero(visible).tolist() and len(bits) >= len(visible)
    assert int(np.count_nonzero(store.visibility(knowledge.Principal("adhoc", admin=True)))) == 2


@pytest.fixture
def served(tmp_path):
    clock = Clock()
    served = ServedStore(str(tmp_path / "served.store"), store_config=config(clock))
    declare(served.store)
    served.store.create_principal("reader", read=["public"])
    served.store.create_principal("writer", read=["public"], write=["public"])
    try:
        yield served
    finally:
        served.close()


@pytest.mark.parametrize("name", ["reader", "writer"])
def test_lifecycle_admin_calls_need_an_admin(served, name):
    """A Store is the whole store: the server takes set_ttl, ttl and sweep_expired from admins only, as its
    other Store-level calls (principals, checkpoint, store stats); any principal may wait_applied."""
    served.store.set_ttl("Person", "1d")
    with served.client(token=served.store.issue_token(name)) as client:
        for call in (lambda: client.set_ttl("AgentLog", "7d"), client.ttl, client.sweep_expired,
                     lambda: client.set_ttl("Person", None), lambda: client.visibility(knowledge.Principal("x"))):
            with pytest.raises(PermissionDenied, match="admin"):
                call()
        assert client.wait_applied() is None
        assert client.wait_applied(client.memory_lsn) is None  # its own view LSN: nothing to wait for
    assert served.store.ttl()["Person"]["expire_after_s"] == DAY  # nothing changed


def test_wait_applied_past_the_last_commit_waits_within_the_deadline(served):
    with served.client(timeout_s=0.5) as client:
        with pytest.raises(DeadlineExceeded):
            client.wait_applied(served.store.memory_lsn + 1)
    with served.client() as client:
        with pytest.raises(InvalidArgument):
            client.wait_applied(1.0)


def test_a_replica_refuses_lifecycle_writes(tmp_path):
    with knowledge.open(str(tmp_path / "replica.store"), config=config(Clock())) as store:
        declare(store)
        store.create_principal("root", admin=True)
        token = store.issue_token("root")
        with KnowledgeServer(store, ServerConfig(listen="127.0.0.1:0"), role=ReplicaRole("10.0.0.1:50051")) as server:
            with knowledge.connect(server.address, token=token) as client:
                for call in (lambda: client.set_ttl("AgentLog", "7d"), client.sweep_expired):
                    with pytest.raises(NotPrimary) as info:
                        call()
                    assert info.value.primary == "10.0.0.1:50051"
                assert client.ttl() == {} and client.wait_applied() is None  # reads are served


def test_waits_for_a_later_commit_leave_the_read_lane_to_reads(tmp_path):
    """wait_applied(lsn) past the last commit returns once a commit reaches it; meanwhile the waits (more
    of them than the light read lane has threads) do not hold up other reads."""
    import threading
    import time

    with knowledge.open(str(tmp_path / "lane.store"), config=config(Clock())) as store:
        declare(store)
        store.create_principal("root", admin=True)
        token = store.issue_token("root")
        with KnowledgeServer(store, ServerConfig(listen="127.0.0.1:0", read_workers=2)) as server:
            target = store.memory_lsn + 1
            clients = [knowledge.connect(server.address, token=token, timeout_s=20) for _ in range(4)]
            done: list[float] = []
            threads = [threading.Thread(target=lambda c=c: (c.wait_applied(target), done.append(time.monotonic())))
                       for c in clients]
            for thread in threads:
                thread.start()
            time.sleep(0.3)
            assert done == []  # still waiting for LSN `target`
            with knowledge.connect(server.address, token=token, timeout_s=5) as reader:
                started = time.monotonic()
                assert reader.session().count() == 0 and reader.ttl() == {}  # not queued behind the waits
                assert time.monotonic() - started < 3
            committed = time.monotonic()
            store.session().transaction().upsert_nodes("Person", [{"name": "ada"}]).commit()
            for thread in threads:
                thread.join(10)
            assert len(done) == 4 and all(t >= committed for t in done)
            for client in clients:
                client.close()
