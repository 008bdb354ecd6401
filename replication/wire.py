"""The bytes of the protocol's messages on the wire: one frame per batch of messages.

A frame is a 4-byte big-endian header length, a JSON header (the messages' fields, entries without
their payloads) and then every entry payload back to back, in order. Payloads travel as raw bytes:
a batch of records costs one JSON header, not one encoding per byte. A malformed frame raises
InvalidArgument (a peer speaking another protocol is refused, never half-read).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any

from knowledge.errors import InvalidArgument
from knowledge.replication.lsn import EpochStart, Position
from knowledge.replication.messages import (
    Append,
    AppendAck,
    Entry,
    InstallSnapshot,
    Message,
    Prepare,
    Promise,
    Subscribe,
)

_LENGTH = struct.Struct(">I")
_KINDS: dict[str, type] = {cls.__name__: cls for cls in (Subscribe, Append, AppendAck, InstallSnapshot, Prepare,
                                                          Promise)}


def _position(p: Position) -> list[int]:
    return [p.epoch, p.lsn]


def _header(message: Message, payloads: list[bytes]) -> dict[str, Any]:
    doc: dict[str, Any] = {"k": type(message).__name__, "s": message.sender, "t": message.to, "e": message.epoch}
    if isinstance(message, Subscribe):
        doc.update(zone=message.zone, last=message.last_lsn, epochs=[[x.epoch, x.first_lsn] for x in message.epochs],
                   applied=message.applied_lsn, inc=message.incarnation, seq=message.sequence)
    elif isinstance(message, Append):
        doc.update(prev=_position(message.prev), commit=message.commit_lsn,
                   entries=[[x.lsn, x.epoch, x.timestamp_ns, len(x.payload)] for x in message.entries])
        payloads.extend(x.payload for x in message.entries)
    elif isinstance(message, AppendAck):
        doc.update(match=message.match_lsn, applied=message.applied_lsn)
    elif isinstance(message, InstallSnapshot):
        doc.update(pos=_position(message.position), epochs=[[x.epoch, x.first_lsn] for x in message.epochs],
                   commit=message.commit_lsn)
    elif isinstance(message, Prepare):
        doc.update(last=_position(message.last))
    elif isinstance(message, Promise):
        doc.update(granted=message.granted, last=_position(message.last))
    return doc


def encode(messages: Sequence[Message]) -> bytes:
    """One frame carrying `messages` in order."""
    payloads: list[bytes] = []
    header = json.dumps([_header(m, payloads) for m in messages], separators=(",", ":")).encode()
    return b"".join([_LENGTH.pack(len(header)), header, *payloads])


def _message(doc: dict[str, Any], body: memoryview, offset: int) -> tuple[Message, int]:
    kind, common = doc["k"], (str(doc["s"]), str(doc["t"]), int(doc["e"]))
    if kind == "Subscribe":
        return Subscribe(*common, str(doc["zone"]), int(doc["last"]),
                         tuple(EpochStart(int(a), int(b)) for a, b in doc["epochs"]), int(doc["applied"]),
                         int(doc["inc"]), int(doc["seq"])), offset
    if kind == "Append":
        entries = []
        for lsn, epoch, timestamp_ns, size in doc["entries"]:
            payload = bytes(body[offset:offset + size])
            if len(payload) != size:
                raise InvalidArgument("replication frame: an entry payload is cut short")
            offset += size
            entries.append(Entry(int(lsn), int(epoch), payload, int(timestamp_ns)))
        return Append(*common, Position(*doc["prev"]), tuple(entries), int(doc["commit"])), offset
    if kind == "AppendAck":
        return AppendAck(*common, int(doc["match"]), int(doc["applied"])), offset
    if kind == "InstallSnapshot":
        return InstallSnapshot(*common, Position(*doc["pos"]), tuple(EpochStart(int(a), int(b))
                                                                     for a, b in doc["epochs"]),
                               int(doc["commit"])), offset
    if kind == "Prepare":
        return Prepare(*common, Position(*doc["last"])), offset
    if kind == "Promise":
        return Promise(*common, bool(doc["granted"]), Position(*doc["last"])), offset
    raise InvalidArgument(f"replication frame: unknown message kind {kind!r}")


def decode(frame: bytes) -> list[Message]:
    """The messages of one frame; InvalidArgument when it is not a well-formed frame."""
    try:
        (length,) = _LENGTH.unpack_from(frame, 0)
        header = json.loads(bytes(frame[_LENGTH.size:_LENGTH.size + length]))
        body = memoryview(frame)[_LENGTH.size + length:]
        out: list[Message] = []
        offset = 0
        for doc in header:
            message, offset = _message(doc, body, offset)
            out.append(message)
    except InvalidArgument:
        raise
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"replication frame is malformed: {exc}") from None
    if offset != len(body):
        raise InvalidArgument("replication frame has trailing bytes")
    return out
