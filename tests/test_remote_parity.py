"""knowledge.connect() gives the embedded API: every public Store, Session and Transaction attribute of the
embedded classes exists on the remote ones with the same parameters (names, kinds, defaults), except an
explicit allow-list of the engine's in-process state, which raises NotAvailableRemotely saying why.

A public method added to Store/Session/Transaction without a remote counterpart (or an allow-list entry
with its reason, in knowledge/remote/store.py:EMBEDDED_ONLY and here) fails this test.
"""

from __future__ import annotations

import inspect

import pytest
from remote_fixture import ServedStore

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
