"""Snapshot transfer over real processes: a new replica (empty directory) joins after the primary's WAL
retention limit let a checkpoint drop the records it would need, so it is sent a snapshot; SIGKILLed
while the snapshot streams in (the link throttled in the proxy), it restarts, drops the partial copy,
re-snapshots and catches up, with no acknowledged write lost. No timed assertions."""

from __future__ import annotations

import os
import shutil

import pytest
from replication_cluster import Cluster, Writer, missing_keys, seed_store

from knowledge.replication import snapshot

ZONES = {"a": "z1", "b": "z2", "c": "z3"}
LIMITS = ["--wal-segment-bytes", "65536", "--wal-retention-max-bytes", "300000"]


def _partial_bytes(path: str) -> int:
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            try:
                total += os.path.getsize(os.path.join(folder, name))
            except OSError:
                pass
    return total


@pytest.fixture
def cluster(tmp_path):
    made = Cluster(str(tmp_path / "cluster"), ZONES, "sync(1)", seed_store)
    made.extra_args = list(LIMITS)
    yield made
    made.close()


def _load(cluster: Cluster, node: str, batches: int, size: int, prefix: str) -> list[str]:
    keys = []
    with cluster.client(node) as client:
        session = client.session()
        for b in range(batches):
            tx = session.transaction()
            batch = [f"{prefix}{b}-{i}" for i in range(size)]
            tx.upsert_nodes("Doc", [{"name": k, "n": i} for i, k in enumerate(batch)])
            tx.commit()
            keys += batch
    return keys


def test_a_replica_killed_mid_snapshot_restarts_resnapshots_and_catches_up(cluster):
    shutil.rmtree(cluster.data("b"))  # b is a new member: an empty directory
    cluster.start("a", "primary")
    cluster.start("c", "replica", primary="a")
    cluster.wait_ready("a", "c")
    cluster.wait_for("a to be primary", lambda: cluster.writable("a"))
    acked = _load(cluster, "a", 60, 200, "bulk")
    # b never subscribed: it needs LSN 1, past the retention limit (measured every second)
    cluster.wait_for("b to be cut off", lambda: cluster.status("a")["counters"].get("retention_limit", 0) >= 1)
    assert "retention_limit" in cluster.log("a") and cluster.status("a")["retention_floor"] > 1
    with cluster.client("a") as client:
        client.checkpoint()

    writer = Writer(cluster, "a").start()
    cluster.wait_for("writes under load", lambda: len(writer.acked) >= 20)
    cluster.proxies[("b", "a")].delay_s = 0.05  # b's fetch from a crawls through the proxy
    cluster.start("b", "replica", primary="a")
    partial = os.path.join(cluster.data("b"), snapshot.PARTIAL)
    cluster.wait_for("the snapshot to stream in", lambda: _partial_bytes(partial) > 256 << 10, timeout_s=180)
    cluster.kill("b")  # SIGKILL mid-transfer
    assert os.path.isdir(partial)
    assert not os.path.exists(os.path.join(cluster.data("b"), snapshot.INCOMING))

    cluster.proxies[("b", "a")].delay_s = 0.0
    cluster.start("b", "replica", primary="a")
    cluster.wait_ready("b")
    cluster.wait_for("b to install a snapshot", lambda: cluster.status("b")["counters"].get("snapshots_installed", 0)
                     >= 1, timeout_s=180)
    assert not os.path.exists(partial)
    cluster.wait_for("more writes after the install", lambda: len(writer.acked) >= 60)
    writer.finish()
    acked += writer.acked
    final = cluster.status("a")["commit_lsn"]
    cluster.wait_for("b to catch up", lambda: cluster.status("b")["applied_lsn"] >= final)
    b = cluster.status("b")
    assert b["role"] == "replica" and b["last"] == cluster.status("a")["last"]
    assert b["snapshots"] and b["snapshots"][-1]["bytes"] > 0
    assert missing_keys(cluster, "b", acked) == []
    assert missing_keys(cluster, "a", acked) == []
    assert cluster.log("b").count("fetching the snapshot") >= 2  # once cut by the kill, once installed
    assert cluster.status("a")["counters"].get("snapshot_needed", 0) >= 1


def test_retention_keeps_the_wal_a_lagging_replica_needs_up_to_the_limit_then_it_resnapshots(cluster):
    cluster.start("a", "primary")
    cluster.start("b", "replica", primary="a")
    cluster.start("c", "replica", primary="a")
    cluster.wait_ready()
    cluster.wait_for("a to be primary", lambda: cluster.writable("a"))
    acked = _load(cluster, "a", 2, 50, "warm")
    cluster.wait_for("b to follow", lambda: cluster.status("b")["applied_lsn"] >= cluster.status("a")["commit_lsn"])

    # b down, a few writes (well under the limit), a checkpoint: the WAL b needs is kept, it catches up from it
    cluster.kill("b")
    acked += _load(cluster, "a", 3, 50, "small")
    with cluster.client("a") as client:
        client.checkpoint()
    assert cluster.status("a")["counters"].get("retention_limit", 0) == 0
    cluster.start("b", "replica", primary="a")
    cluster.wait_ready("b")
    cluster.wait_for("b to catch up from the WAL",
                     lambda: cluster.status("b")["applied_lsn"] >= cluster.status("a")["commit_lsn"])
    assert cluster.status("b")["counters"].get("snapshots_installed", 0) == 0
    assert cluster.status("a")["counters"].get("snapshot_needed", 0) == 0

    # b down again, writes past the limit and a checkpoint: b is cut off (logged, counted) and re-snapshots
    cluster.kill("b")
    acked += _load(cluster, "a", 60, 200, "big")
    cluster.wait_for("b to be cut off", lambda: cluster.status("a")["counters"].get("retention_limit", 0) >= 1)
    with cluster.client("a") as client:
        client.checkpoint()
    assert cluster.status("a")["counters"]["retention_limit"] == 1  # once, for b
    assert "retention_limit" in cluster.log("a") and "b needs LSN" in cluster.log("a")
    cluster.start("b", "replica", primary="a")
    cluster.wait_ready("b")
    cluster.wait_for("b to re-snapshot and catch up",
                     lambda: cluster.status("b")["applied_lsn"] >= cluster.status("a")["commit_lsn"], timeout_s=180)
    assert cluster.status("b")["counters"].get("snapshots_installed", 0) == 1
    assert missing_keys(cluster, "b", acked) == []
    assert cluster.status("c")["counters"].get("snapshots_installed", 0) == 0  # c kept up: never cut off
