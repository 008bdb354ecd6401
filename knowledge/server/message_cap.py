"""The server's message size cap, answered in words: a request over `ServerConfig.message_bytes_max`
gets RESOURCE_EXHAUSTED naming the cap, the request's size and the option that raises it, with
MessageTooLarge in its status details (gRPC's own check answers a bare "Received message larger than
max (N vs. M)" that no client can act on).

A reply over the cap gets the same, naming the reply and how to ask for less. The same deserializer turns
bytes that are no valid request message (garbage, nesting past protobuf's depth limit) into INVALID_ARGUMENT
saying so, where gRPC would answer INTERNAL "Exception deserializing request!".

gRPC's transport limit is set above the cap (`transport_limit`), and an interceptor wraps every unary
request's deserializer so that it measures the raw bytes first: over the cap it returns an `Oversized`
marker instead of parsing them, and the method answers MessageTooLarge without running. A request even
above the transport limit is refused by gRPC itself; knowledge.remote words that answer the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from knowledge.errors import InvalidArgument, MessageTooLarge
from knowledge.server import status

TRANSPORT_FACTOR = 2  # the transport accepts this many times the cap (at least TRANSPORT_SLACK_BYTES more): what it
# buffers per call before the cap is checked, so kept small
TRANSPORT_SLACK_BYTES = 16 << 20
TRANSPORT_BYTES_MAX = (1 << 31) - 1  # gRPC's own ceiling
METHODS_CACHED_MAX = 4096  # wrapped handlers kept (one per method the server serves)


def transport_limit(cap: int) -> int:
    """gRPC's receive limit for a server whose cap is `cap` bytes: room to measure what is over the cap."""
    return min(TRANSPORT_BYTES_MAX, max(cap * TRANSPORT_FACTOR, cap + TRANSPORT_SLACK_BYTES))


def too_large(what: str, size: int, cap: int) -> MessageTooLarge:
    """The error of a request `size` bytes long to a server capped at `cap` bytes."""
    return MessageTooLarge(
        f"the {what} request is {size} bytes, larger than max {cap} bytes, the server's message cap: split it "
        f"(smaller write batches, fewer keys or rows per call) or raise the cap on the server with "
        f"`knowledge serve --message-bytes-max N` (ServerConfig.message_bytes_max; a client sending more than "
        f"64 MiB also needs knowledge.connect(message_bytes_max=N))")


def reply_too_large(what: str, size: int, cap: int) -> MessageTooLarge:
    """The error of a reply `size` bytes long from a server capped at `cap` bytes."""
    return MessageTooLarge(
        f"the {what} reply would be {size} bytes, larger than max {cap} bytes, the server's message cap: ask "
        f"for less (a scan's limit= and cursor=, fewer keys, fewer columns) or raise the cap on the server with "
        f"`knowledge serve --message-bytes-max N` (a client receiving more than 64 MiB also needs "
        f"knowledge.connect(message_bytes_max=N))")


@dataclass(frozen=True, slots=True)
class Undecodable:
    """What a request's deserializer returns for bytes that do not parse as the request message."""

    reason: str


@dataclass(frozen=True, slots=True)
class Oversized:
    """What a request's deserializer returns for bytes over the cap (instead of the parsed message)."""

    size: int


class MessageCap(grpc.ServerInterceptor):
    """Answers requests (and replies) over `cap` bytes with MessageTooLarge, and requests that do not
    parse with InvalidArgument (see the module)."""

    def __init__(self, cap: int, lanes: dict[str, Any] | None = None) -> None:
        self.cap = cap
        self.lanes = lanes or {}  # lane name -> the pool its unary handlers run on (knowledge.server.pool)
        # method name -> its wrapped handler: gRPC asks the interceptor on every call, on the thread that polls
        # for all calls, and a method's handler never changes once found (handlers are only ever added)
        self._wrapped: dict[str, Any] = {}

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        wrapped = self._wrapped.get(details.method)
        if wrapped is not None:
            return wrapped
        wrapped = self._wrap(continuation(details), details)
        if wrapped is not None and len(self._wrapped) < METHODS_CACHED_MAX:
            self._wrapped[details.method] = wrapped
        return wrapped

    def _wrap(self, handler: Any, details: Any) -> Any:
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        cap, parse = self.cap, handler.request_deserializer
        service, _, what = str(details.method).strip("/").rpartition("/")

        def deserialize(data: bytes) -> Any:
            if len(data) > cap:
                return Oversized(len(data))
            try:
                return parse(data)
            except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and kin: the caller's bytes
                return Undecodable(f"{type(exc).__name__}: {exc}")

        def refuse(request: Any, context: grpc.ServicerContext) -> None:
            if isinstance(request, Oversized):
                status.abort(context, too_large(what, request.size, cap))
            if isinstance(request, Undecodable):
                status.abort(context, InvalidArgument(
                    f"the {what} request is not a valid {service} message ({request.reason[:200]}): send it "
                    f"with stubs generated from its .proto (knowledge.v1: "
                    f"knowledge/server/proto/knowledge/v1/knowledge.proto)"))

        def guarded(behavior: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
            def run(request: Any, context: grpc.ServicerContext) -> Any:
                refuse(request, context)
                reply = behavior(request, context)
                size = reply.ByteSize() if hasattr(reply, "ByteSize") else 0
                if size > cap:
                    status.abort(context, reply_too_large(what, size, cap))
                return reply
            return run

        if handler.unary_unary is not None:
            behavior = guarded(handler.unary_unary)
            lane = self.lanes.get(getattr(handler.unary_unary, "knowledge_lane", None))
            if lane is not None:  # gRPC runs a behavior with this attribute on that pool
                behavior.experimental_thread_pool = lane  # type: ignore[attr-defined]
            return handler._replace(request_deserializer=deserialize, unary_unary=behavior)
        if handler.unary_stream is not None:
            inner = handler.unary_stream

            def stream(request: Any, context: grpc.ServicerContext) -> Any:
                refuse(request, context)
                yield from inner(request, context)
            return handler._replace(request_deserializer=deserialize, unary_stream=stream)
        return handler
