"""Store limits and knobs, each with its unit in its name, validated once."""

from __future__ import annotations

from dataclasses import dataclass, field

from knowledge.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class VectorConfig:
    """Index and planner settings (per store)."""

    hnsw_rows_min: int = 50_000        # live rows from which HNSW is built in the background ("auto" kind)
    hnsw_tail_rows_max: int = 4096     # rows past the HNSW graph (searched exactly) before it is extended
    tombstone_fraction_max: float = 0.2  # dead rows, as a fraction of all, from which a checkpoint compacts
    kind: str = "auto"                 # "auto", "flat" or "hnsw"
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 160
    ef_search_max: int = 2048
    gather_fraction: float = 0.05
    gather_rows_min: int = 4096
    device: str = "auto"               # exact scans on "cpu", "gpu", or the GPU when one is usable ("auto")
    gpu_memory_fraction_max: float = 0.5  # an index's rows go to the GPU only within this share of its memory
    gpu_rows_min: int = 32_768         # with device "auto", smaller indexes scan on the CPU (a GPU search
                                       # costs ~0.65 ms fixed on an H200: bench/RESULTS.md)

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "gpu"):
            raise InvalidArgument(f"vector device must be auto, cpu or gpu, not {self.device!r}")
        if self.gpu_rows_min < 0:
            raise InvalidArgument(f"vector gpu_rows_min must be >= 0, not {self.gpu_rows_min!r}")
        if not 0 < self.gpu_memory_fraction_max <= 1:
            raise InvalidArgument(f"vector gpu_memory_fraction_max must be in (0, 1], not {self.gpu_memory_fraction_max!r}")
        if self.kind not in ("auto", "flat", "hnsw"):
            raise InvalidArgument(f"vector index kind must be auto, flat or hnsw, not {self.kind!r}")
        if not 0 < self.tombstone_fraction_max <= 1 or self.hnsw_tail_rows_max < 0:
            raise InvalidArgument("vector tombstone_fraction_max must be in (0, 1] and hnsw_tail_rows_max >= 0")


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
    disk_free_bytes_min: int = 8 << 20  # commits are refused (StorageFull) below this much free space
    row_cache_rows_max: int = 10_000  # whole node rows kept for point reads; 0 turns the cache off
    audit: bool = False
    replicated: bool = False  # knowledge.replication drives it: open replays no WAL record past the tables
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
        if self.disk_free_bytes_min < 0:
            raise InvalidArgument(f"config disk_free_bytes_min must be >= 0, got {self.disk_free_bytes_min}")
        if self.wal_preallocate_bytes < 0:
            raise InvalidArgument(f"config wal_preallocate_bytes must be >= 0, got {self.wal_preallocate_bytes}")
        if self.value_bytes_max > self.transaction_bytes_max:
            raise InvalidArgument("config value_bytes_max exceeds transaction_bytes_max")
