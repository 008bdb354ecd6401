"""knowledge: an embedded store holding a typed property graph, vectors and document columns.

    import knowledge
    store = knowledge.open("my.store")
    session = store.session()          # admin; pass a Principal for scoped access
"""

from knowledge.access.principal import ADMIN, Principal
from knowledge.config import StoreConfig
from knowledge.errors import KnowledgeError
from knowledge.session import NodeRef, Session
from knowledge.store import Store, open_store
from knowledge.store import recover_store as recover
from knowledge.store import restore_store as restore
from knowledge.transaction import Transaction

open = open_store  # noqa: A001 - knowledge.open(path) is the entry point


def connect(address: str, token: str | None = None, tls: object = None, **options: object) -> object:
    """A client of a `knowledge serve` server whose Store/Session API matches the embedded one
    (knowledge.remote.connect: tls=None/False plaintext, True system roots, a CA path or a remote.TLS)."""
    from knowledge.remote import connect as _connect

    return _connect(address, token, tls, **options)  # type: ignore[arg-type]


__all__ = ["ADMIN", "KnowledgeError", "NodeRef", "Principal", "Session", "Store", "StoreConfig",
           "Transaction", "connect", "open", "open_store", "recover", "restore"]
__version__ = "0.1.0"
