"""The write-ahead log: the store's source of truth (framed, CRC-checked records in segments)."""

from knowledge.storage.wal.log import WriteAheadLog
from knowledge.storage.wal.record import Record

__all__ = ["Record", "WriteAheadLog"]
