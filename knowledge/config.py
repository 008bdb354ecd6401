"""Store limits and knobs, each with its unit in its name, validated once."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from knowledge.errors import InvalidArgument
from knowledge.storage import crypto

KEY_FILE_ENV = "KNOWLEDGE_ENCRYPTION_KEY_FILE"  # the key file a config naming no key uses (CLI, server)


@dataclass(frozen=True, slots=True)
class VectorConfig:
    """Index and planner settings (per store)."""

    hnsw_rows_min: int = 50_000        # live rows from which HNSW is built in the background ("auto" kind)
    hnsw_tail_rows_max: int = 4096     # rows past the HNSW graph (searched exactly) before it is extended
    tombstone_fraction_max: float = 0.2  # dead rows, as a fraction of all, from which a checkpoint compacts
    kind: str = "auto"                 # "auto", "flat" or "hnsw"
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int | None = None       # None: calibrated to recall_target on each graph; an int fixes efSearch
                                       # (and the planner estimates costs instead of measuring them)
    ef_search_max: int = 2048
    recall_target: float = 0.99        # recall@10 the calibrated HNSW plans must reach on the stored rows
    calibration_queries: int = 200     # index rows sampled as calibration queries
    recalibrate_growth: float = 0.2    # recalibrate once the graph's rows changed by this share
    gather_fraction: float = 0.05
    gather_rows_min: int = 4096
    gathered_cache_fraction: float = 0.5  # a filter searched again at one version scans a contiguous copy of
                                          # its rows (each at most 1/4 of them): copies kept up to this share
                                          # of the index's rows (0: none)
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
        if not 0 < self.recall_target <= 1:
            raise InvalidArgument(f"vector recall_target must be in (0, 1], not {self.recall_target!r}")
        if not 0 <= self.gathered_cache_fraction <= 1:
            raise InvalidArgument(f"vector gathered_cache_fraction must be in [0, 1], not {self.gathered_cache_fraction!r}")
        if self.calibration_queries < 10 or self.recalibrate_growth <= 0:
            raise InvalidArgument("vector calibration_queries must be >= 10 and recalibrate_growth > 0")
        if self.ef_search is not None and not 1 <= self.ef_search <= self.ef_search_max:
            raise InvalidArgument(f"vector ef_search must be None or in 1..ef_search_max, not {self.ef_search!r}")
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
    group_commit_max: int = 256  # transactions one group commit (Engine.commit) takes at most; 1: each alone
    disk_free_bytes_min: int = 8 << 20  # commits are refused (StorageFull) below this much free space
    row_cache_rows_max: int = 10_000  # whole node rows kept for point reads; 0 turns the cache off
    audit: bool = False
    replicated: bool = False  # knowledge.replication drives it: open replays no WAL record past the tables
    audit_entries_max: int = 100_000
    vectors: VectorConfig = field(default_factory=VectorConfig)
    # TTL (README "TTL and retention"): the clock deadlines are read against (seconds since the epoch; tests
    # pass their own), and the background sweeper that deletes expired rows: how often it looks, how many
    # rows one of its WAL records deletes at most, and its rate cap (0: the sweeper thread does not run;
    # store.sweep_expired() still does).
    clock: Callable[[], float] = field(default=time.time, repr=False, compare=False)
    ttl_sweep_interval_s: float = 1.0
    ttl_sweep_batch_rows: int = 1000
    ttl_sweep_rows_per_s: float = 10_000.0
    # Encryption at rest (AES-256-GCM of WAL segments, index snapshots and backups; README "Encryption at
    # rest"): the current key as 32 bytes / 64 hex characters, or a file holding it, or a KMS-style callback
    # `provider(key_id) -> key` with encryption_key_id naming the current key. Older keys (files written
    # before a rotation) by id, or as a list of keys under their derived ids.
    encryption_key: bytes | str | None = field(default=None, repr=False)
    encryption_key_id: str | None = None
    encryption_key_file: str | None = None
    encryption_key_provider: Callable[[str], Any] | None = field(default=None, repr=False)
    encryption_old_keys: Mapping[str, bytes | str] | Iterable[bytes | str] = field(default=(), repr=False)

    def keyring(self) -> crypto.Keyring | None:
        """The keys this config gives (None: the store is not encrypted); reads the key file or asks the
        provider. InvalidArgument for a malformed key or two sources of the current key. A config naming no
        key takes the key file $KNOWLEDGE_ENCRYPTION_KEY_FILE when set (so the CLI and `knowledge serve`
        open encrypted stores)."""
        key_file = self.encryption_key_file
        if key_file is None and self.encryption_key is None and self.encryption_key_provider is None:
            key_file = os.environ.get(KEY_FILE_ENV) or None
        return crypto.keyring_from(self.encryption_key, key_id=self.encryption_key_id, key_file=key_file,
                                   provider=self.encryption_key_provider, older=self.encryption_old_keys)

    def __post_init__(self) -> None:
        if self.encryption_key is not None and self.encryption_key_provider is None:
            self.keyring()  # a malformed key is refused here, not at open
        for name in ("segment_bytes_max", "value_bytes_max", "transaction_bytes_max",
                     "transaction_rows_max", "labels_per_node_max", "traversal_nodes_max",
                     "overlay_edges_max", "apply_delay_ms", "group_commit_max", "audit_entries_max"):
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"config {name} must be positive, got {getattr(self, name)}")
        if self.row_cache_rows_max < 0:
            raise InvalidArgument(f"config row_cache_rows_max must be >= 0, got {self.row_cache_rows_max}")
        if self.disk_free_bytes_min < 0:
            raise InvalidArgument(f"config disk_free_bytes_min must be >= 0, got {self.disk_free_bytes_min}")
        if not callable(self.clock):
            raise InvalidArgument(f"config clock must be a callable returning seconds, got {self.clock!r}")
        if not self.ttl_sweep_interval_s > 0 or self.ttl_sweep_batch_rows <= 0 or not self.ttl_sweep_rows_per_s >= 0:
            raise InvalidArgument("config ttl_sweep_interval_s and ttl_sweep_batch_rows must be positive and "
                                  "ttl_sweep_rows_per_s >= 0")
        if self.wal_preallocate_bytes < 0:
            raise InvalidArgument(f"config wal_preallocate_bytes must be >= 0, got {self.wal_preallocate_bytes}")
        if self.value_bytes_max > self.transaction_bytes_max:
            raise InvalidArgument("config value_bytes_max exceeds transaction_bytes_max")
