"""KnowledgeError <-> gRPC status, both directions, shared by the server and knowledge.remote.

A failed call carries its status code, a message that says what to fix, and in its status details
(`grpc-status-details-bin`, a google.rpc.Status) one `knowledge.v1.ErrorDetail` naming the exception class
and its structured fields, so the client raises an instance of the same class with the same message and
fields. Errors that the transport itself produces (deadline, connection refused, message too large)
become DeadlineExceeded, Unavailable and ResourceExhausted.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import grpc

from knowledge import errors
from knowledge.embed import EmbedderUnavailable
from knowledge.server.v1 import knowledge_pb2 as pb

DETAILS_KEY = "grpc-status-details-bin"
PRIMARY_KEY = "knowledge-primary"
DETAIL_TYPE_URL = "type.googleapis.com/knowledge.v1.ErrorDetail"
FIELDS = ("type_name", "row", "field", "value", "key", "path", "holder_pid", "segment", "offset", "lsn",
          "format", "primary", "detail", "property", "operator")
MESSAGE_CHARS_MAX = 1000  # a status message longer than this is cut: trailers have a size cap (8 KiB by default)
FIELD_CHARS_MAX = 256  # a str field of an error is cut to this many characters in the details
FIELD_ITEMS_MAX = 32  # and a list field to this many items


# What a status without an ErrorDetail (from the transport, or another server) becomes on the client.
_FALLBACK: dict[grpc.StatusCode, type[Exception]] = {
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.NOT_FOUND: errors.KnowledgeError,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: errors.InvalidArgument,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.CANCELLED: errors.Unavailable,
}


def _registry() -> dict[str, type[BaseException]]:
    from knowledge import embed

    found: dict[str, type[BaseException]] = {}
    for module, root in ((errors, errors.KnowledgeError), (embed, EmbedderUnavailable)):
        for name in dir(module):
            value = getattr(module, name)
            if isinstance(value, type) and issubclass(value, root):
                found[name] = value
    return found


CLASSES = _registry()


def status_code(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status code of `exc` (knowledge.errors.STATUS_CODES; INTERNAL for anything it does not name)."""
    return getattr(grpc.StatusCode, errors.status_of(exc))


def _jsonable(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= FIELD_CHARS_MAX else value[:FIELD_CHARS_MAX] + "..."
    if value is None or isinstance(value, int | float | bool):
        return value
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value[:FIELD_ITEMS_MAX]]
    if isinstance(value, dict):
        return {str(k)[:FIELD_CHARS_MAX]: _jsonable(v) for k, v in list(value.items())[:FIELD_ITEMS_MAX]}
    return _jsonable(repr(value))


def error_detail(exc: BaseException) -> pb.ErrorDetail:
    """The ErrorDetail describing `exc`: its class name and structured fields."""
    name = type(exc).__name__ if type(exc).__name__ in CLASSES else "KnowledgeError"
    fields = {f: _jsonable(getattr(exc, f)) for f in FIELDS if hasattr(exc, f)}
    return pb.ErrorDetail(error_class=name, fields_json=json.dumps(fields),
                          primary=str(getattr(exc, "primary", None) or ""))


def trailers(exc: BaseException, code: grpc.StatusCode, message: str) -> list[tuple[str, Any]]:
    """The trailing metadata that carries `exc` (status details, and the primary's address)."""
    status = pb.RpcStatus(code=code.value[0], message=message)
    status.details.add().Pack(error_detail(exc))
    out: list[tuple[str, Any]] = [(DETAILS_KEY, status.SerializeToString())]
    primary = getattr(exc, "primary", None)
    if primary:
        out.append((PRIMARY_KEY, str(primary)))
    return out


def abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    """End the call with `exc` as its status (raises, as context.abort does)."""
    code = status_code(exc)
    message = str(exc) or type(exc).__name__
    if len(message) > MESSAGE_CHARS_MAX:
        message = message[:MESSAGE_CHARS_MAX] + " [cut]"
    context.set_trailing_metadata(trailers(exc, code, message))
    context.abort(code, message)


def _detail_of(error: grpc.RpcError) -> pb.ErrorDetail | None:
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == DETAILS_KEY:
            status = pb.RpcStatus()
            try:
                status.ParseFromString(value)
            except Exception:  # noqa: BLE001 - details from an unknown server: fall back to the code
                return None
            for any_detail in status.details:
                detail = pb.ErrorDetail()
                if any_detail.Unpack(detail):
                    return detail
    return None


def _build(cls: type[BaseException], message: str, fields: dict[str, Any]) -> BaseException:
    """An instance of `cls` whose str() is `message` and whose fields are `fields`, whatever its __init__."""
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    for name, value in fields.items():
        try:
            setattr(exc, name, value)
        except AttributeError:
            pass
    return exc


def transport_too_large(message: str) -> str:
    """gRPC's own "Sent/Received message larger than max (N vs. M)" in words: which cap, and how to raise it."""
    found = re.search(r"\((\d+) vs\. (\d+)\)", message)
    sizes = f"{found.group(1)} bytes, larger than max {found.group(2)} bytes" if found else "larger than max"
    side = ("this client's send cap or, for a reply, the server's" if message.lower().startswith("sent") else
            "the server's transport cap for a request, or this client's for a reply")
    return (f"a message of {sizes} ({side}): split the call (smaller write batches, fewer keys, a scan's "
            f"limit=) or raise the cap: `knowledge serve --message-bytes-max N` on the server, "
            f"knowledge.connect(..., message_bytes_max=N) on the client")


def exception_from(error: grpc.RpcError) -> BaseException:
    """The exception a failed call stands for: the server's own class when it said so."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = (error.details() if hasattr(error, "details") else None) or str(code)
    detail = _detail_of(error)
    if detail is not None and detail.error_class in CLASSES:
        try:
            fields = json.loads(detail.fields_json or "{}")
        except ValueError:
            fields = {}
        if detail.primary:
            fields["primary"] = detail.primary
        return _build(CLASSES[detail.error_class], message, fields)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "message larger than max" in message.lower():
        return _build(errors.MessageTooLarge, transport_too_large(message), {})
    cls = _FALLBACK.get(code, errors.KnowledgeError)
    return _build(cls, f"{code.name}: {message}", {})
