"""The remote back-end of the shared API tests: a real KnowledgeServer on a loopback socket over a real
store directory, reached through knowledge.connect with an admin principal's token.

`open_backend("embedded" | "remote", path)` yields a store with the Store API either way (tinydb
style: every API test runs against both)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import knowledge
from knowledge.server import KnowledgeServer, ServerConfig

ADMIN_NAME = "root"


class ServedStore:
    """An embedded store served on 127.0.0.1 (ephemeral port), with an admin token for clients."""

    def __init__(self, path: str, config: ServerConfig | None = None, *,
                 store_config: knowledge.StoreConfig | None = None) -> None:
        self.path = path
        self.store = knowledge.open(path, config=store_config)
        if ADMIN_NAME not in {p.name for p in self.store.principals()}:
            self.store.create_principal(ADMIN_NAME, admin=True)
        self.token = self.store.issue_token(ADMIN_NAME)
        self.server = KnowledgeServer(self.store, config or ServerConfig(listen="127.0.0.1:0")).start()
        self.address = self.server.address

    def client(self, token: str | None = None, **options: Any) -> Any:
        return knowledge.connect(self.address, token=token or self.token, **options)

    def close(self) -> None:
        self.server.stop(drain_s=5)
        self.store.close()


@contextlib.contextmanager
def open_backend(kind: str, path: str, store_config: knowledge.StoreConfig | None = None) -> Iterator[Any]:
    """The store at `path` opened with `store_config`: embedded, or served and reached as the admin "root"."""
    if kind == "embedded":
        store = knowledge.open(path, config=store_config)
        try:
            yield store
        finally:
            store.close()
        return
    served = ServedStore(path, store_config=store_config)
    client = served.client()
    try:
        yield client
    finally:
        client.close()
        served.close()
