"""lifecycle: the space TTL expiry gives back. N rows inserted, 90% expired by a TTL policy, swept
(WAL deletes) and checkpointed (compaction): the store's bytes on disk.

Baseline, same run: a store built with the surviving 10% alone, checkpointed (ratio target <= 1.3x).
bench/lifecycle.py holds the measurement."""

from __future__ import annotations

from typing import Any

from bench.suites import Context

NAME = "lifecycle"


def run(context: Context) -> dict[str, Any]:
    from bench import lifecycle

    rows, runs = context.pick((100_000, 3), (20_000, 1), (2_000, 1))
    out = lifecycle.run(rows, 64, runs)
    median = out["median"]
    return {"baseline": {"name": "survivors alone", "description": "a store built with the surviving 10% of "
                                                                  "the rows only, checkpointed"},
            "rows": rows, "runs": runs, "bytes": {"all_rows": median["full_bytes"],
                                                  "expired_checkpointed": median["expired_bytes"],
                                                  "survivors_alone": median["alone_bytes"]},
            "ratios": {"expired_checkpointed": median["ratio"], "expired_closed": median["ratio_closed"],
                       "all_rows": median["full_bytes"] / median["alone_bytes"],
                       "ingest_with_ttl": median["ingest_ratio"], "commit_with_ttl": median["commit_ratio"]},
            "sweep_rows_per_s": median["sweep_rows_per_s"], "checkpoint_s": median["checkpoint_s"]}
