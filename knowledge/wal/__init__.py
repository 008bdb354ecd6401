"""The write-ahead log: the store's source of truth (framed, CRC-checked records in segments)."""

from knowledge.wal.log import WriteAheadLog
from knowledge.wal.record import Record

__all__ = ["Record", "WriteAheadLog"]
