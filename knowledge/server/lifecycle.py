"""The lifecycle RPCs: TTL policies (Store.set_ttl, Store.ttl), sweeping expired rows (Store.sweep_expired)
and waiting for the tables (Store.wait_applied), each a thin shell over the Store method.

Permissions mirror the server's other Store-level calls: a Store is the whole store, so what changes or
describes it store-wide is for admins (SetTtl and SweepExpired as writes, refused with NotPrimary on a
replica; GetTtl as a read: TTL records in the change feed go to admins only too). WaitApplied changes
nothing and shows a non-admin no more than its reads do, so any principal may wait, as any may read
`memory_lsn`.

A value set_ttl takes travels as the Python type it was (str, float, int, timedelta; anything else as its
repr), and is rebuilt here, so the store validates, and refuses with the same class and message, exactly
what the caller passed.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

from knowledge.errors import DeadlineExceeded, Unavailable
from knowledge.server import wire
from knowledge.server.calls import handler, session_lsn
from knowledge.server.pool import blocking
from knowledge.server.v1 import knowledge_pb2 as pb

WAIT_POLL_S = 0.01  # how often WaitApplied looks for a commit past the server's LSN
_BOOLS = {"True": True, "False": False}


class Unsupported:
    """Stands for a client value the wire cannot carry: its repr() is the client's, so the store's error
    message names what the caller passed."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def expire_after_from_proto(request: pb.SetTtlRequest) -> Any:
    which = request.WhichOneof("expire_after")
    if which is None:
        return None
    if which == "timedelta_seconds":
        return dt.timedelta(seconds=request.timedelta_seconds)
    if which == "unsupported":
        return _BOOLS.get(request.unsupported, Unsupported(request.unsupported))
    return getattr(request, which)


def on_from_proto(request: pb.SetTtlRequest) -> Any:
    if request.HasField("on"):
        return request.on
    return Unsupported(request.on_unsupported) if request.on_unsupported else None


class Lifecycle:
    """TTL and table-apply RPCs over the wire (mixed into the servicer)."""

    stop: threading.Event  # the servicer's: set when a drain begins

    @handler(write=True, admin=True)
    def SetTtl(self, request: pb.SetTtlRequest, session: Any, context: Any) -> pb.LsnReply:
        return pb.LsnReply(lsn=session.store.set_ttl(request.type, expire_after_from_proto(request),
                                                     on=on_from_proto(request)))

    @handler(admin=True)
    def GetTtl(self, request: pb.GetTtlRequest, session: Any, context: Any) -> pb.JsonReply:
        return pb.JsonReply(json=wire.dumps(session.store.ttl()))

    @handler(write=True, admin=True)
    def SweepExpired(self, request: pb.SweepExpiredRequest, session: Any, context: Any) -> pb.JsonReply:
        rows_max = int(request.rows_max) if request.HasField("rows_max") else None
        return pb.JsonReply(json=wire.dumps(session.store.sweep_expired(rows_max=rows_max)))

    @handler()
    def WaitApplied(self, request: pb.WaitAppliedRequest, session: Any, context: Any) -> pb.LsnReply:
        """As embedded: blocks until the tables hold `lsn` (default: everything committed now), waiting first,
        within the call's deadline and until a drain, for a commit that reaches it when `lsn` is past what
        this server applied. A non-admin waits on its own view LSN (session_lsn), so the wait shows it no
        more of the store's progress than its reads do."""
        lsn = int(request.lsn) if request.HasField("lsn") else None
        with blocking():  # a wait of unknown length: its read lane runs the reads queued behind it meanwhile
            while lsn is not None and (now := session_lsn(session)) < lsn:
                remaining = context.time_remaining()
                if remaining is not None and remaining <= WAIT_POLL_S:
                    raise DeadlineExceeded(f"no commit reached LSN {lsn} within the call's deadline (this server "
                                           f"is at {now}); give it more time, or wait for an LSN a commit returned")
                if self.stop.wait(WAIT_POLL_S):
                    raise Unavailable("the server is shutting down; retry against another server or later")
            session.store.wait_applied(lsn)
        return pb.LsnReply(lsn=session_lsn(session))
