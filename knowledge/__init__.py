"""knowledge: an embedded store holding a typed property graph, vectors and document columns.

    import knowledge
    store = knowledge.open("my.store")
    session = store.session()          # admin; pass a Principal for scoped access
"""

from knowledge.backup import restore_store as restore
from knowledge.config import StoreConfig
from knowledge.errors import KnowledgeError
from knowledge.principal import ADMIN, Principal
from knowledge.session import NodeRef, Session
from knowledge.store import Store, open_store
from knowledge.transaction import Transaction

open = open_store  # noqa: A001 - knowledge.open(path) is the entry point

__all__ = ["ADMIN", "KnowledgeError", "NodeRef", "Principal", "Session", "Store", "StoreConfig",
           "Transaction", "open", "open_store", "restore"]
__version__ = "0.1.0"
