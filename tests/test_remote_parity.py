"""knowledge.connect() gives the embedded API: every public Store, Session and Transaction attribute of the
embedded classes exists on the remote ones with the same parameters (names, kinds, defaults), except an
explicit allow-list of the engine's in-process state, which raises NotAvailableRemotely saying why.

A public method added to Store/Session/Transaction without a remote counterpart (or an allow-list entry
with its reason, in knowledge/remote/store.py:EMBEDDED_ONLY and here) fails this test.
"""

from __future__ import annotations

import inspect

import pytest
from remote_fixture import ServedStore, open_backend

import knowledge
from knowledge.errors import NotAvailableRemotely
from knowledge.graphrag.retrieve import retrieve as graphrag_retrieve
from knowledge.remote import RemoteSession, RemoteStore, RemoteTransaction
from knowledge.remote.store import EMBEDDED_ONLY

# The deliberate exceptions: Store attributes that are the owning process's in-process state (engine,
# config, audit ring, tables, WAL, node directory, graph / vector / keyword indexes, row cache, index
# builder, state lock) or its commit pipeline (Store.commit(principal, items), which transactions run on).
# A client has none of them; each raises NotAvailableRemotely (an AttributeError) naming the remote way.
STORE_EMBEDDED_ONLY = {"engine", "config", "audit", "tables", "wal", "directory", "edges", "catalog", "vectors",
                       "keywords", "row_cache", "indexer", "state_lock", "commit"}


def public(cls, instance=None):
    names = {name for name, _ in inspect.getmembers(cls) if not name.startswith("_")}
    if instance is not None:
        names |= {name for name in vars(instance) if not name.startswith("_")}
    return names


def parameters(function):
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


@pytest.fixture
def both(tmp_path):
    """An embedded store (with a session and a transaction) and a client of it over a real socket."""
    served = ServedStore(str(tmp_path / "parity.store"))
    client = served.client()
    try:
        yield served.store, client
    finally:
        client.close()
        served.close()


def test_the_allow_list_is_explicit():
    assert set(EMBEDDED_ONLY) == STORE_EMBEDDED_ONLY
    assert all(isinstance(why, str) and len(why) > 20 for why in EMBEDDED_ONLY.values())


def test_every_public_store_attribute_is_on_the_remote_store(both):
    store, client = both
    embedded, remote = public(knowledge.Store, store), public(RemoteStore, client)
    assert embedded - remote == set(), f"public Store attributes missing from RemoteStore: {embedded - remote}"
    implemented = embedded - STORE_EMBEDDED_ONLY
    assert {"set_ttl", "ttl", "sweep_expired", "wait_applied", "visibility"} <= implemented
    for name in sorted(implemented):
        member = inspect.getattr_static(knowledge.Store, name, None)
        if member is None or isinstance(member, property):
            assert not callable(getattr(client, name)) or name == "schema", name
            continue
        assert parameters(getattr(knowledge.Store, name)) == parameters(getattr(RemoteStore, name)), name


@pytest.mark.parametrize(("embedded", "remote"), [(knowledge.Session, RemoteSession),
                                                  (knowledge.Transaction, RemoteTransaction)])
def test_every_public_session_and_transaction_method_is_remote(both, embedded, remote):
    store, client = both
    instances = (store.session(), client.session())
    if embedded is knowledge.Transaction:
        instances = (instances[0].transaction(), instances[1].transaction())
    names = public(embedded, instances[0])
    assert names - public(remote, instances[1]) == set()
    for name in sorted(names):
        member = inspect.getattr_static(embedded, name, None)
        if member is None or isinstance(member, property) or not callable(member):
            continue
        if name == "retrieve":  # the embedded one passes **options on to graphrag.retrieve; remote spells them out
            expected = [(p.name, p.kind) for p in inspect.signature(graphrag_retrieve).parameters.values()][1:]
            assert [(n, k) for n, k, _ in parameters(remote.retrieve)][1:] == expected
            continue
        assert parameters(member) == parameters(getattr(remote, name)), name


def test_embedded_only_attributes_raise_a_typed_error(both):
    _, client = both
    for name in sorted(STORE_EMBEDDED_ONLY):
        with pytest.raises(NotAvailableRemotely, match=rf"Store\.{name} is not available over a connection"):
            getattr(client, name)
        assert not hasattr(client, name)  # an AttributeError too
        assert getattr(client, name, None) is None
    with pytest.raises(NotAvailableRemotely, match=r"read rows with session\.scan\(\)"):
        client.tables  # noqa: B018
    with pytest.raises(NotAvailableRemotely, match=r"transaction\(\)"):
        client.commit(None, [])


# Bad arguments the wire cannot carry as they are (a type name or node id that is no int/str, keys or grants that
# are no list, a schema change of the wrong shape): the client refuses them as the embedded API does, where it
# used to send them on as something else (int(1.5) == 1, list("public") == ["p", "u", ...]) or fail with a raw
# TypeError. Each runs on both back-ends; the exception classes must be the same.
def _bad_calls(store, tmp):
    session = store.session()
    return {
        "session(5)": lambda: store.session(5),
        "create_principal(5)": lambda: store.create_principal(5),
        "create_principal(read='public')": lambda: store.create_principal("p1", read="public"),
        "create_principal(read=[5])": lambda: store.create_principal("p2", read=[5]),
        "create_principal(write=[''])": lambda: store.create_principal("p3", write=[""]),
        "grant(5)": lambda: store.grant(5, read=["a"]),
        "issue_token(5)": lambda: store.issue_token(5),
        "drop_principal(None)": lambda: store.drop_principal(None),
        "backup(5)": lambda: store.backup(5),
        "build_indexes(timeout_s=-1)": lambda: store.build_indexes(timeout_s=-1),
        "apply_schema(5)": lambda: store.apply_schema(5),
        "apply_schema(unknown section)": lambda: store.apply_schema({"types": {}}),
        "apply_schema(nodes=5)": lambda: store.apply_schema({"nodes": 5}),
        "apply_schema(spec 5)": lambda: store.apply_schema({"nodes": {"A": 5}}),
        "apply_schema(properties 5)": lambda: store.apply_schema({"edges": {"E": {"source": "Doc", "target": "Doc",
                                                                                   "properties": 5}}}),
        "get(5)": lambda: session.get(5, "a"),
        "get_many(keys=5)": lambda: session.get_many("Doc", 5),
        "get_many(keys='ab')": lambda: session.get_many("Doc", "ab"),
        "scan(5)": lambda: session.scan(5),
        "count(5)": lambda: session.count(5),
        "neighbors(edge_type=5)": lambda: session.neighbors("Doc", "a", edge_type=5),
        "traverse(edge_type=[5])": lambda: session.traverse("Doc", "a", edge_type=[5]),
        "adjacency(5)": lambda: session.adjacency(5),
        "edges(5)": lambda: session.edges(5),
        "ref(1.5)": lambda: session.ref(1.5),
        "ref('a')": lambda: session.ref("a"),
        "ref(True)": lambda: session.ref(True),
        "upsert_nodes(5)": lambda: session.transaction().upsert_nodes(5, [{"name": "x"}]).commit(),
        "delete_nodes(keys=5)": lambda: session.transaction().delete_nodes("Doc", 5).commit(),
        "delete_nodes(keys={})": lambda: session.transaction().delete_nodes("Doc", {"a": 1}).commit(),
        "upsert_edges(5)": lambda: session.transaction().upsert_edges(5, [{"src": "a", "dst": "a"}]).commit(),
        "audit_log(limit=0)": lambda: session.audit_log(limit=0),
        "audit_log(limit=1.5)": lambda: session.audit_log(limit=1.5),
    }


def _outcome(call):
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - a raw TypeError is what this test is about
        return type(exc)
    return None


def test_bad_arguments_raise_the_same_class_on_both(tmp_path):
    outcomes = {}
    for kind in ("embedded", "remote"):
        with open_backend(kind, str(tmp_path / f"{kind}.store")) as store:
            store.define_node_type("Doc", key="name", properties={"body": "text"})
            store.define_edge_type("L", source="Doc", target="Doc")
            store.session().transaction().upsert_nodes("Doc", [{"name": "a"}, {"name": "b"}]).commit()
            outcomes[kind] = {name: _outcome(call) for name, call in _bad_calls(store, tmp_path).items()}
            assert {p.name for p in store.principals()} <= {"root"}  # no principal made of bad grants
            assert store.session().count("Doc") == 2
    assert outcomes["remote"] == outcomes["embedded"]
    assert all(isinstance(cls, type) and issubclass(cls, knowledge.KnowledgeError)
               for cls in outcomes["remote"].values()), outcomes["remote"]


def test_schema_sections_that_are_empty_apply_alike(tmp_path):
    for kind in ("embedded", "remote"):
        with open_backend(kind, str(tmp_path / f"{kind}.store")) as store:
            store.apply_schema({"nodes": {"A": {"key": "k", "properties": None}}, "edges": None})
            assert set(store.schema.nodes) == {"A"} and store.schema.nodes["A"].key == "k"
            assert store.build_indexes(timeout_s=0) in (True, False)  # 0 s is no wait, not "no timeout"


def test_grants_given_as_a_generator_are_read_once(tmp_path):
    """A generator of labels grants what it yields on both back-ends (the embedded check read it twice, and
    the second pass, empty, was what it granted)."""
    for kind in ("embedded", "remote"):
        with open_backend(kind, str(tmp_path / f"{kind}.store")) as store:
            store.create_principal("gen", read=(label for label in ("public", "team")), write=iter(["team"]))
            principal = next(p for p in store.principals() if p.name == "gen")
            assert principal.read == frozenset({"public", "team"}) and principal.write == frozenset({"team"}), kind


def test_query_vectors_pack_as_numpy_would():
    """The client's fast packing of a list of floats gives numpy's little-endian float32 bytes, for every
    input numpy accepts (lists, tuples, nested lists, arrays, ints and bools), and refuses the rest alike."""
    import numpy as np

    from knowledge.errors import InvalidArgument
    from knowledge.remote.session import _packed

    for vector in ([0.25, -1.5, 3.0], (1, 2, 3), [True, 2.5], [[1.0, 2.0], [3.0, 4.0]],
                   np.arange(6, dtype=np.float64).reshape(2, 3), [float("inf"), float("nan")],
                   list(np.random.default_rng(3).random(384))):
        assert _packed(vector) == np.asarray(vector, dtype="<f4").reshape(-1).tobytes(), vector
    for bad in (["a", 1.0], "abc", [[1.0], [2.0, 3.0]]):
        with pytest.raises(InvalidArgument, match="query vector"):
            _packed(bad)
