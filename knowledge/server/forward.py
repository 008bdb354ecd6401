"""A read process's calls that only the primary answers (writes, administration, audit reads, change feeds),
passed on to it unchanged: the request's bytes, the caller's metadata (its bearer token included) and the time
left to its deadline; the primary's reply, status, details and trailers (the KnowledgeError class the client
re-raises) come back as they are (knowledge.server.read_processes)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from knowledge.server.message_cap import transport_limit
from knowledge.server.v1 import knowledge_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["Knowledge"]
# answered by a read process from its own copy (as of an LSN at least the primary's when the call arrived)
LOCAL = frozenset({"GetSchema", "Get", "GetMany", "Scan", "Edges", "Neighbors", "Traverse", "Refs", "Visible",
                   "Adjacency", "Search", "KeywordSearch", "Retrieve", "Count", "Stats", "WhoAmI"})
FORWARDED = {f"/{SERVICE.full_name}/{method.name}": method.server_streaming
             for method in SERVICE.methods if method.name not in LOCAL}
FORWARDED_NAMES = frozenset(path.rpartition("/")[2] for path in FORWARDED)
DIRECT_PORT_KEY = "knowledge-primary-port"  # in a forwarded answer's trailers: the serving process's own port on
# the same host, where the client may send these calls itself (knowledge.remote does, saving the hop)


def _time_left(context: grpc.ServicerContext) -> float | None:
    """The caller's deadline, as a timeout (None when it set none: gRPC then answers about 9.2e18 s)."""
    left = context.time_remaining()
    return None if left is None or left > 1e9 else left


def _passed_on(context: grpc.ServicerContext) -> list[tuple[str, Any]]:
    return [(key, value) for key, value in context.invocation_metadata() or ()
            if not key.startswith("grpc-") and key not in (":authority", "user-agent")]


def _answer_error(context: grpc.ServicerContext, error: grpc.RpcError, hint: tuple[tuple[str, str], ...]) -> None:
    trailers = getattr(error, "trailing_metadata", lambda: None)() or ()
    context.set_trailing_metadata((*trailers, *hint))
    context.abort(error.code(), error.details() or "")


class Forwarder(grpc.ServerInterceptor):
    """Serves FORWARDED methods by calling the primary at `address` (a private unix socket)."""

    def __init__(self, address: str, message_bytes_max: int, direct_port: int = 0) -> None:
        limit = transport_limit(message_bytes_max)
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", limit),
                                                               ("grpc.max_send_message_length", limit)])
        self.hint: tuple[tuple[str, str], ...] = ((DIRECT_PORT_KEY, str(direct_port)),) if direct_port else ()
        self._handlers: dict[str, Any] = {}
        for method, streaming in FORWARDED.items():
            self._handlers[method] = (self._stream_handler(method) if streaming else self._unary_handler(method))

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = self._handlers.get(details.method)
        return handler if handler is not None else continuation(details)

    def _unary_handler(self, method: str) -> Any:
        call = self.channel.unary_unary(method)  # bytes in, bytes out

        def forward(request: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                reply, outcome = call.with_call(request, metadata=_passed_on(context),
                                                timeout=_time_left(context))
            except grpc.RpcError as error:
                _answer_error(context, error, self.hint)
                raise  # abort raised already; for type checkers
            context.set_trailing_metadata((*(outcome.trailing_metadata() or ()), *self.hint))
            return reply
        return grpc.unary_unary_rpc_method_handler(forward)

    def _stream_handler(self, method: str) -> Any:
        call = self.channel.unary_stream(method)

        def forward(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
            replies = call(request, metadata=_passed_on(context), timeout=_time_left(context))
            context.add_callback(replies.cancel)  # the caller went away: so does the primary's stream
            try:
                yield from replies
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.CANCELLED or context.is_active():
                    _answer_error(context, error, self.hint)
            context.set_trailing_metadata((*(replies.trailing_metadata() or ()), *self.hint))
        return grpc.unary_stream_rpc_method_handler(forward)

    def close(self) -> None:
        self.channel.close()
