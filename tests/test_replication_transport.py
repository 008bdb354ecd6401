"""The gRPC links: `Push` is a bidirectional stream. What the receiver hands to the `reply` it is given
with each delivery comes back on the same call's response stream to the sender's `Links.bind` receiver;
once the call has ended, `reply` says so (False) and sends nothing (the driver then uses its link)."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc

from knowledge.replication import transport
from knowledge.replication.lsn import Position
from knowledge.replication.messages import Append, AppendAck, Entry, Message


class Receiver:
    """The receiving side's stand-in for a Replicator: acks every Append at once through `reply`."""

    def __init__(self) -> None:
        self.delivered: list[Message] = []
        self.replies: list[object] = []
        self.results: list[bool] = []
        self.event = threading.Condition()

    def deliver(self, messages: list[Message], reply=None) -> None:
        with self.event:
            self.delivered += messages
            self.replies.append(reply)
            self.event.notify_all()
        for message in messages:
            if isinstance(message, Append) and reply is not None:
                last = message.entries[-1].lsn if message.entries else message.prev.lsn
                self.results.append(reply([AppendAck(message.to, message.sender, message.epoch, last, 0)]))


def _wait(predicate, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_acks_come_back_on_the_call_their_append_came_by_and_a_closed_call_refuses_replies():
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((transport.handler(receiver),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    received: list[Message] = []
    links = transport.Links({"a": "127.0.0.1:1", "b": f"127.0.0.1:{port}"}, "a")
    links.bind(received.extend)
    try:
        for lsn in (1, 2, 3):
            links.send("b", Append("a", "b", 2, Position(2, lsn - 1), (Entry(lsn, 2, b"x" * lsn, lsn),), lsn - 1))
        _wait(lambda: len(received) >= 3)
        assert received == [AppendAck("b", "a", 2, lsn, 0) for lsn in (1, 2, 3)]
        assert [m.entries[0].payload for m in receiver.delivered] == [b"x", b"xx", b"xxx"]  # type: ignore[attr-defined]
        assert receiver.results == [True, True, True]
        reply = receiver.replies[-1]
    finally:
        links.close()
    # the link's close half-closes the call: replies may still get through until the handler ends it
    _wait(lambda: not reply([AppendAck("b", "a", 2, 9, 0)]))  # type: ignore[operator]
    time.sleep(0.2)
    count = len(received)
    assert reply([AppendAck("b", "a", 2, 10, 0)]) is False  # type: ignore[operator]
    time.sleep(0.3)
    server.stop(0)
    assert len(received) == count and all(m.match_lsn != 10 for m in received)  # type: ignore[attr-defined]
