"""One connection to a knowledge server: the gRPC channel (TLS or loopback plaintext), the bearer
token, the default deadline, and the call wrapper that turns failed calls back into the server's
KnowledgeError classes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from knowledge.errors import InvalidArgument
from knowledge.server import status
from knowledge.server.v1 import knowledge_pb2_grpc as pb_grpc

MESSAGE_BYTES_MAX = 64 << 20
TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class TLS:
    """Client TLS settings: `ca` (PEM file of the server's CA; None: the system roots), and for mTLS
    `cert` and `key` (PEM files of this client's certificate). `server_name` overrides the name checked
    against the server's certificate."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            if path is None:
                return None
            with open(path, "rb") as f:
                return f.read()

        if (self.cert is None) != (self.key is None):
            raise InvalidArgument("client TLS needs both cert and key for mTLS (or neither)")
        return grpc.ssl_channel_credentials(root_certificates=read(self.ca), private_key=read(self.key),
                                            certificate_chain=read(self.cert))


def as_tls(tls: bool | str | TLS | None) -> TLS | None:
    """`tls` as a TLS (True: system roots; a str: the CA file; None/False: plaintext)."""
    if tls is None or tls is False:
        return None
    if tls is True:
        return TLS()
    if isinstance(tls, str):
        return TLS(ca=tls)
    if isinstance(tls, TLS):
        return tls
    raise InvalidArgument(f"tls must be a bool, a CA file path or a knowledge.remote.TLS, got {tls!r}")


class Connection:
    """The channel, its stub and the metadata every call carries."""

    def __init__(self, address: str, token: str | None, tls: TLS | None, *, timeout_s: float | None,
                 message_bytes_max: int) -> None:
        if not isinstance(address, str) or ":" not in address:
            raise InvalidArgument(f"server address {address!r} must be HOST:PORT")
        self.address = address
        self.token = token
        self.timeout_s = timeout_s
        options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", message_bytes_max),
                                          ("grpc.max_send_message_length", message_bytes_max),
                                          # a connection of its own, not one shared by every client in this
                                          # process: a server with read processes spreads connections
                                          ("grpc.use_local_subchannel_pool", 1)]
        if tls is None:
            self.channel = grpc.insecure_channel(address, options=options)
        else:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self.channel = grpc.secure_channel(address, tls.credentials(), options=options)
        self.stub = pb_grpc.KnowledgeStub(self.channel)
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()

    def metadata_as(self, principal: Any) -> tuple[tuple[str, str], ...]:
        """The call metadata of a session acting as `principal` (None: the token's own)."""
        if principal is None:
            return self.metadata
        if isinstance(principal, str):
            return (*self.metadata, ("knowledge-as", principal))
        document = {"name": principal.name, "read": sorted(principal.read), "write": sorted(principal.write),
                    "admin": principal.admin}
        return (*self.metadata, ("knowledge-as-principal", json.dumps(document)))

    def call(self, method: str, request: Any, metadata: Sequence[tuple[str, str]] | None = None,
             timeout_s: float | None = None) -> Any:
        """Call `method` with `request`; a failure raises the server's exception class."""
        try:
            return getattr(self.stub, method)(request, metadata=self.metadata if metadata is None else metadata,
                                              timeout=self.timeout_s if timeout_s is None else timeout_s)
        except grpc.RpcError as error:
            raise status.exception_from(error) from None

    def stream(self, method: str, request: Any, metadata: Sequence[tuple[str, str]] | None = None,
               timeout_s: float | None = None) -> Any:
        """A server-streaming call's replies, failures raised as the server's exception class."""
        replies = getattr(self.stub, method)(request, metadata=self.metadata if metadata is None else metadata,
                                             timeout=timeout_s)
        try:
            yield from replies
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.CANCELLED or (
                    timeout_s is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED):
                return  # closed by the caller, or the stream's own time is up
            raise status.exception_from(error) from None
        finally:
            replies.cancel()

    def close(self) -> None:
        self.channel.close()
