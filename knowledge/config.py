"""Store limits and knobs, each with its unit in its name, validated once."""

from __future__ import annotations

from dataclasses import dataclass, field

from knowledge.errors import InvalidArgument
from knowledge.vectors import VectorConfig


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Caps and settings of one open store."""

    fsync: bool = True
    segment_bytes_max: int = 64 << 20
    wal_preallocate_bytes: int = 4 << 20  # zeros written ahead of appends; 0 turns preallocation off
    value_bytes_max: int = 16 << 20
    transaction_bytes_max: int = 512 << 20
    transaction_rows_max: int = 20_000_000
    labels_per_node_max: int = 256
    traversal_nodes_max: int = 1_000_000
    overlay_edges_max: int = 65_536
    apply_delay_ms: int = 100
    row_cache_rows_max: int = 10_000  # whole node rows kept for point reads; 0 turns the cache off
    audit: bool = False
    audit_entries_max: int = 100_000
    vectors: VectorConfig = field(default_factory=VectorConfig)

    def __post_init__(self) -> None:
        for name in ("segment_bytes_max", "value_bytes_max", "transaction_bytes_max",
                     "transaction_rows_max", "labels_per_node_max", "traversal_nodes_max",
                     "overlay_edges_max", "apply_delay_ms", "audit_entries_max"):
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"config {name} must be positive, got {getattr(self, name)}")
        if self.row_cache_rows_max < 0:
            raise InvalidArgument(f"config row_cache_rows_max must be >= 0, got {self.row_cache_rows_max}")
        if self.wal_preallocate_bytes < 0:
            raise InvalidArgument(f"config wal_preallocate_bytes must be >= 0, got {self.wal_preallocate_bytes}")
        if self.value_bytes_max > self.transaction_bytes_max:
            raise InvalidArgument("config value_bytes_max exceeds transaction_bytes_max")
