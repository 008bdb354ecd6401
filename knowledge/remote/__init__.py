"""The network client: `knowledge.connect(address, token=...)` returns a RemoteStore whose Store and
Session methods match the embedded ones (same names, arguments, result types and exceptions); only the
engine's in-process state (`store.tables`, `wal`, ..., `knowledge.remote.store.EMBEDDED_ONLY`) raises
NotAvailableRemotely (an AttributeError) naming the remote way.

    store = knowledge.connect("kb.internal:50051", token="kn_...", tls="ca.pem")
    session = store.session()                    # the token's principal
    result = session.retrieve("Who wrote the first program?", k=5, embedder=embedder)
"""

from __future__ import annotations

import os

from knowledge.errors import InvalidArgument
from knowledge.remote.channel import MESSAGE_BYTES_MAX, TIMEOUT_S, TLS, Connection, as_tls
from knowledge.remote.session import RemoteSession, RemoteTransaction
from knowledge.remote.store import Change, ChangeRecord, RemoteStore

TOKEN_ENV = "KNOWLEDGE_TOKEN"


def connect(address: str, token: str | None = None, tls: bool | str | TLS | None = None, *,
            timeout_s: float | None = TIMEOUT_S, message_bytes_max: int = MESSAGE_BYTES_MAX) -> RemoteStore:
    """A client of the server at `address` ("host:port").

    `token`: a bearer token from `knowledge principal token` (default: $KNOWLEDGE_TOKEN). `tls`: None or
    False for plaintext (loopback servers), True for TLS with the system's roots, a CA file path, or a
    TLS(ca=, cert=, key=, server_name=) for mTLS. `timeout_s`: every call's deadline (None: none).
    Connecting is lazy: an unreachable server surfaces as Unavailable on the first call.
    """
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    if timeout_s is not None and timeout_s <= 0:
        raise InvalidArgument(f"timeout_s must be positive or None, got {timeout_s}")
    return RemoteStore(Connection(address, token, as_tls(tls), timeout_s=timeout_s,
                                  message_bytes_max=message_bytes_max))


__all__ = ["TLS", "Change", "ChangeRecord", "RemoteSession", "RemoteStore", "RemoteTransaction", "connect"]
