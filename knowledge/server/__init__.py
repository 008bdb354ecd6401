"""The gRPC server (`knowledge serve`) and the wire protocol it shares with knowledge.remote.

    from knowledge.server import KnowledgeServer, ServerConfig
    with KnowledgeServer(store, ServerConfig(listen="127.0.0.1:0")) as server:
        client = knowledge.connect(server.address, token=token)
"""

from __future__ import annotations

from typing import Any

from knowledge.server.config import ServerConfig

__all__ = ["KnowledgeServer", "PrimaryRole", "ReplicaRole", "ServerConfig", "serve"]


def __getattr__(name: str) -> Any:  # grpc and the servicer load only when a server is wanted
    if name in ("KnowledgeServer", "serve"):
        from knowledge.server import app
        return getattr(app, name)
    if name in ("PrimaryRole", "ReplicaRole"):
        from knowledge.server import calls
        return getattr(calls, name)
    raise AttributeError(name)
