"""The replication wire frames: every message kind survives encode/decode unchanged (payload bytes too),
and a malformed frame is refused with InvalidArgument, never half-read."""

from __future__ import annotations

import pytest

from knowledge.errors import InvalidArgument
from knowledge.replication import wire
from knowledge.replication.lsn import EpochStart, Position
from knowledge.replication.messages import (
    Append,
    AppendAck,
    Entry,
    InstallSnapshot,
    Prepare,
    Promise,
    Subscribe,
)

MESSAGES = [
    Subscribe("b", "a", 3, "z2", 17, (EpochStart(1, 1), EpochStart(3, 9)), 15, 2**47 + 5, 4),
    Append("a", "b", 3, Position(3, 10), (Entry(11, 3, b"x" * 1000, 123), Entry(12, 3, b"", 0),
                                          Entry(13, 3, bytes(range(256)), 2**62)), 12),
    Append("a", "c", 3, Position(0, 0), (), 0),
    AppendAck("b", "a", 3, 13, 12),
    InstallSnapshot("a", "b", 4, Position(4, 99), (EpochStart(4, 1),), 99),
    Prepare("c", "a", 5, Position(3, 13)),
    Promise("a", "c", 5, True, Position(3, 12)),
    Promise("b", "c", 5, False, Position(3, 14)),
]


def test_round_trip_of_every_message_kind():
    assert wire.decode(wire.encode(MESSAGES)) == MESSAGES
    for message in MESSAGES:
        assert wire.decode(wire.encode([message])) == [message]
    assert wire.decode(wire.encode([])) == []


@pytest.mark.parametrize("frame", [b"", b"\x00\x00\x00\x09not json!", b"\x00\x00\x00\x02[{",
                                   b"\x00\x00\x00\x0b[{\"k\":\"X\"}]"])
def test_malformed_frames_are_refused(frame):
    with pytest.raises(InvalidArgument, match="frame"):
        wire.decode(frame)


def test_a_cut_payload_or_trailing_bytes_are_refused():
    frame = wire.encode([MESSAGES[1]])
    with pytest.raises(InvalidArgument, match="cut short"):
        wire.decode(frame[:-10])
    with pytest.raises(InvalidArgument, match="trailing"):
        wire.decode(frame + b"junk")
