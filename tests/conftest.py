"""Shared fixtures. `store` runs each test twice: on the live store, and on one closed and reopened
between writing and reading (`store.reopen()`), so every read is also checked after WAL recovery."""

from __future__ import annotations

import pytest

import knowledge


class ReopenableStore:
    """Wraps a Store; `reopen()` closes it and opens it again when the test runs in 'recovered' mode."""

    def __init__(self, path: str, recover: bool) -> None:
        self.path = path
        self.recover = recover
        self.store = knowledge.open(path)

    def reopen(self) -> knowledge.Store:
        if self.recover:
            self.store.close()
            self.store = knowledge.open(self.path)
        return self.store

    def __getattr__(self, name: str):
        return getattr(self.store, name)


@pytest.fixture(params=["live", "recovered"])
def store(request, tmp_path):
    wrapper = ReopenableStore(str(tmp_path / "store"), request.param == "recovered")
    yield wrapper
    wrapper.store.close()


@pytest.fixture
def people(store):
    """A store with Person/Company nodes and KNOWS/WORKS_AT edges declared (no rows)."""
    store.define_node_type("Person", key="name", properties={
        "age": "int", "score": "float", "bio": "text", "active": "bool", "born": "timestamp",
        "meta": "json", "tags": "list[str]", "ssn": {"type": "str", "hidden": True}})
    store.define_node_type("Company", key="cid", properties={"cid": "int", "title": "str"})
    store.define_edge_type("KNOWS", source="Person", target="Person", properties={"since": "int"})
    store.define_edge_type("WORKS_AT", source="Person", target="Company")
    return store


@pytest.fixture(params=["embedded", "remote"])
def api_store(request, tmp_path):
    """One store API, two back-ends (tinydb style): the embedded Store, and a RemoteStore talking to a real
    gRPC server over a loopback socket (tests/remote_fixture.py). The remote one acts as an admin."""
    from remote_fixture import open_backend

    with open_backend(request.param, str(tmp_path / "api.store")) as backend:
        yield backend
