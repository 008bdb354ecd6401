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
from knowledge.server.forward import DIRECT_PORT_KEY, FORWARDED_NAMES
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
    """The channel, its stub and the metadata every call carries.

    A server with read processes (`knowledge serve --read-processes`) names, in the answers a read process
    passed on to the serving process, that process's own port: the writes, admin calls and change feeds of
    this connection then go there directly (a second channel), saving the hop through the read process."""

    def __init__(self, address: str, token: str | None, tls: TLS | None, *, timeout_s: float | None,
                 message_bytes_max: int) -> None:
        if not isinstance(address, str) or ":" not in address:
            raise InvalidArgument(f"server address {address!r} must be HOST:PORT")
        self.address = address
        self.token = token
        self.timeout_s = timeout_s
        self._tls, self._message_bytes_max = tls, message_bytes_max
        self.channel = self._open(address)
        self.stub = pb_grpc.KnowledgeStub(self.channel)
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self._direct: tuple[Any, Any] | None = None  # (channel, stub) to the serving process, once named

    def _open(self, address: str) -> Any:
        options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", self._message_bytes_max),
                                          ("grpc.max_send_message_length", self._message_bytes_max),
                                          # a connection of its own, not one shared by every client in this
                                          # process: a server with read processes spreads connections
                                          ("grpc.use_local_subchannel_pool", 1)]
        tls = self._tls
        if tls is None:
            return grpc.insecure_channel(address, options=options)
        if tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
        return grpc.secure_channel(address, tls.credentials(), options=options)

    def _stub_for(self, method: str) -> Any:
        if self._direct is not None and method in FORWARDED_NAMES:
            return self._direct[1]
        return self.stub

    def _learn(self, trailers: Any) -> None:
        """Open the direct channel to the serving process whose port `trailers` name (if they do)."""
        for key, value in trailers or ():
            if key == DIRECT_PORT_KEY and str(value).isdigit() and self._direct is None:
                host = self.address.rpartition(":")[0]
                channel = self._open(f"{host}:{value}")
                self._direct = (channel, pb_grpc.KnowledgeStub(channel))
                return

    def _forget(self, stub: Any) -> None:
        """The direct channel failed to reach the serving process: back to the shared address."""
        direct = self._direct
        if direct is not None and direct[1] is stub:
            self._direct = None
            direct[0].close()

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
        stub = self._stub_for(method)
        metadata = self.metadata if metadata is None else metadata
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            if stub is self.stub and method in FORWARDED_NAMES:  # a read process may name the serving process
                reply, outcome = getattr(stub, method).with_call(request, metadata=metadata, timeout=timeout)
                self._learn(outcome.trailing_metadata())
                return reply
            return getattr(stub, method)(request, metadata=metadata, timeout=timeout)
        except grpc.RpcError as error:
            if stub is self.stub:
                self._learn(error.trailing_metadata() if hasattr(error, "trailing_metadata") else None)
            elif error.code() == grpc.StatusCode.UNAVAILABLE:
                self._forget(stub)
            raise status.exception_from(error) from None

    def stream(self, method: str, request: Any, metadata: Sequence[tuple[str, str]] | None = None,
               timeout_s: float | None = None) -> Any:
        """A server-streaming call's replies, failures raised as the server's exception class."""
        stub = self._stub_for(method)
        replies = getattr(stub, method)(request, metadata=self.metadata if metadata is None else metadata,
                                        timeout=timeout_s)
        try:
            yield from replies
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.CANCELLED or (
                    timeout_s is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED):
                return  # closed by the caller, or the stream's own time is up
            if stub is not self.stub and error.code() == grpc.StatusCode.UNAVAILABLE:
                self._forget(stub)
            raise status.exception_from(error) from None
        finally:
            replies.cancel()

    def close(self) -> None:
        if self._direct is not None:
            self._direct[0].close()
            self._direct = None
        self.channel.close()
