"""Replication over real processes and sockets: `knowledge serve --role` nodes in three zones on
loopback, every replication link through a TCP proxy the tests cut; SIGKILL, `knowledge promote`,
rejoin by truncation, and each commit policy's behaviour with links cut. No timed assertions: every
wait is for a state, with a generous bound."""

from __future__ import annotations

import time

import pytest
from replication_cluster import Cluster, Writer, missing_keys, seed_store

from knowledge.cli import main
from knowledge.errors import CommitOutcomeUnknown, DeadlineExceeded, InvalidArgument, NotPrimary

ZONES = {"a": "z1", "b": "z2", "c": "z3"}


@pytest.fixture
def make_cluster(tmp_path):
    made: list[Cluster] = []

    def make(policy: str) -> Cluster:
        cluster = Cluster(str(tmp_path / f"cluster{len(made)}"), ZONES, policy, seed_store)
        made.append(cluster)
        cluster.start("a", "primary")
        cluster.start("b", "replica", primary="a")
        cluster.start("c", "replica", primary="a")
        cluster.wait_ready()
        cluster.wait_for("a to be primary", lambda: cluster.writable("a"))
        return cluster

    yield make
    for cluster in made:
        cluster.close()


def _commit(cluster: Cluster, node: str, key: str) -> int:
    with cluster.client(node) as client:
        tx = client.session().transaction()
        tx.upsert_nodes("Doc", [{"name": key, "n": 1}])
        return tx.commit()


def test_sigkill_primary_promote_lose_nothing_and_rejoin(make_cluster, capsys):
    cluster = make_cluster("sync(1)")
    writer = Writer(cluster, "a").start()
    cluster.wait_for("some acknowledged writes", lambda: len(writer.acked) >= 30)
    cluster.kill("a")  # SIGKILL mid-load
    writer.finish()
    acked = list(writer.acked)
    assert acked, writer.errors

    # manual failover: the most advanced replica (sync(1): at least one holds every acked write)
    last = {n: cluster.status(n)["durable_lsn"] for n in ("b", "c")}
    target = max(last, key=lambda n: last[n])
    assert main(["promote", "--server", cluster.address(target)]) == 0
    assert '"epoch"' in capsys.readouterr().out
    cluster.wait_for(f"{target} to take writes", lambda: cluster.writable(target))
    assert missing_keys(cluster, target, acked) == []
    after = _commit(cluster, target, "after-failover")
    other = "c" if target == "b" else "b"
    with pytest.raises(NotPrimary) as refused:
        _commit(cluster, other, "on-a-replica")
    assert refused.value.primary

    # the old primary restarts as a replica of the new one: its unacknowledged tail is cut, it follows
    cluster.start("a", "replica", primary=target)
    cluster.wait_ready("a")
    cluster.wait_for("a to catch up", lambda: cluster.status("a")["applied_lsn"] >= after)
    status = cluster.status("a")
    assert status["role"] == "replica" and status["epoch"] == cluster.status(target)["epoch"]
    assert status["last"] == cluster.status(target)["last"]
    assert missing_keys(cluster, "a", [*acked, "after-failover"]) == []


def test_zones_2_keeps_committing_with_a_zone_cut_then_outcome_unknown(make_cluster):
    cluster = make_cluster("zones(2),deadline=1s")
    cluster.isolate("c")  # one zone cut: z1 + z2 still make two zones
    lsns = [_commit(cluster, "a", f"k{i}") for i in range(5)]
    assert lsns == sorted(lsns)
    cluster.isolate("b")  # now only the primary's zone: the policy cannot hold
    with pytest.raises(CommitOutcomeUnknown):
        _commit(cluster, "a", "unknown-1")
    assert cluster.status("a")["role"] == "primary"  # still the primary; the record may commit later
    cluster.heal("b")
    cluster.heal("c")
    lsn = _commit(cluster, "a", "after-heal")
    cluster.wait_for("b to apply", lambda: cluster.status("b")["applied_lsn"] >= lsn)
    assert missing_keys(cluster, "b", [f"k{i}" for i in range(5)] + ["after-heal"]) == []


def test_all_with_degrade_falls_back_with_a_metric_and_recovers(make_cluster):
    cluster = make_cluster("all,degrade,deadline=1s")
    _commit(cluster, "a", "before")
    cluster.isolate("c")
    lsn = _commit(cluster, "a", "degraded")  # returns: the policy fell back to async, loudly
    status = cluster.status("a")
    assert status["stats"]["degrade_events"] >= 1 and status["counters"].get("degraded", 0) >= 1
    assert any(kind == "degraded" for _, kind, _ in status["events"])
    cluster.heal("c")
    cluster.wait_for("c to catch up", lambda: cluster.status("c")["applied_lsn"] >= lsn)
    cluster.wait_for("the policy to recover", lambda: cluster.status("a")["counters"].get("recovered", 0) >= 1)
    assert missing_keys(cluster, "c", ["before", "degraded"]) == []


def test_all_without_degrade_blocks_until_the_deadline(make_cluster):
    cluster = make_cluster("all,deadline=1500ms")
    cluster.isolate("b")
    started = time.monotonic()
    with pytest.raises(CommitOutcomeUnknown):
        _commit(cluster, "a", "blocked")
    assert time.monotonic() - started >= 1.0  # it waited for its deadline (a lower bound, never an upper one)


def test_replica_read_with_min_lsn_waits_for_the_commit(make_cluster):
    cluster = make_cluster("async")
    cluster.isolate("b")  # async: the commit returns while b cannot have it
    lsn = _commit(cluster, "a", "ryw")
    with cluster.client("b") as client:
        session = client.session()
        with pytest.raises(DeadlineExceeded), session.min_lsn(lsn, timeout_s=0.5):
            session.get("Doc", "ryw")
        cluster.heal("b")
        with session.min_lsn(lsn, timeout_s=60):
            assert session.get("Doc", "ryw")["name"] == "ryw"  # read-your-writes on the replica
        with pytest.raises(InvalidArgument), session.min_lsn("x/y"):
            session.get("Doc", "ryw")
