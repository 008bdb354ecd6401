"""Log positions: an (epoch, lsn) pair, ordered by epoch then LSN."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True, slots=True)
class Position:
    """A point in the write-ahead log: `lsn` is dense and starts at 1; 0 means "before any record"."""

    epoch: int
    lsn: int

    def __post_init__(self) -> None:
        if self.epoch < 0 or self.lsn < 0:
            raise ValueError(f"negative position {self.epoch}/{self.lsn}")

    def __str__(self) -> str:
        return f"{self.epoch}/{self.lsn}"

    def is_zero(self) -> bool:
        return self.lsn == 0

    @classmethod
    def parse(cls, text: str) -> Position:
        epoch, _, lsn = text.partition("/")
        return cls(int(epoch), int(lsn))


ZERO = Position(0, 0)
