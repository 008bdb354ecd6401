"""Automatic failover through a real etcd (Debian's etcd-server started by the test): SIGKILL the
primary under a load writer, a replica takes over on its own, no acknowledged write is lost, and the
killed node rejoins as a replica. The loop runs a few trials by default and >= 100 under -m slow."""

from __future__ import annotations

import pytest
from replication_cluster import Cluster, Etcd, Writer, etcd_available, missing_keys, seed_store, wait_primary

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd-server is not installed (apt-get install etcd-server)")

ZONES = {"a": "z1", "b": "z2", "c": "z3"}


def _trial(cluster: Cluster, trial: int, acked: list[str]) -> None:
    """Write to the primary, SIGKILL it, wait for the automatic successor, check, let the victim rejoin."""
    primary = wait_primary(cluster)
    writer = Writer(cluster, primary, prefix=f"t{trial}-").start()
    cluster.wait_for("acknowledged writes", lambda: len(writer.acked) >= 10 or not writer.thread.is_alive())
    cluster.kill(primary)
    writer.finish()
    assert writer.acked, writer.errors[-5:]
    acked += writer.acked
    successor = wait_primary(cluster, [n for n in ZONES if n != primary])
    assert missing_keys(cluster, successor, acked) == [], f"trial {trial}: acknowledged writes lost"
    cluster.start(primary, "replica")  # the killed node rejoins on its own (it follows the leader key)
    cluster.wait_ready(primary)
    target = cluster.status(successor)["commit_lsn"]
    cluster.wait_for(f"{primary} to rejoin", lambda: cluster.status(primary)["applied_lsn"] >= target)


def _kill_loop(tmp_path, trials: int, policy: str = "sync(1)") -> None:
    etcd = Etcd(str(tmp_path / "etcd"))
    cluster = Cluster(str(tmp_path / "cluster"), ZONES, policy, seed_store)
    cluster.extra_args = ["--etcd", etcd.address, "--etcd-ttl", "2"]
    try:
        for n in ZONES:
            cluster.start(n, "replica")
        cluster.wait_ready()
        acked: list[str] = []
        for trial in range(trials):
            _trial(cluster, trial, acked)
        final = wait_primary(cluster)
        assert missing_keys(cluster, final, acked) == []
    finally:
        cluster.close()
        etcd.close()


def test_automatic_failover_loses_no_acknowledged_write(tmp_path):
    _kill_loop(tmp_path, trials=2)


@pytest.mark.slow
def test_automatic_failover_100_kills(tmp_path):
    _kill_loop(tmp_path, trials=100)
