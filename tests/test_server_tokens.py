"""The server remembers which principal a bearer token authenticated as (knowledge.server.calls.Calls):
every change to the catalog still takes effect on the next call: revoked tokens, dropped principals and
changed grants, with several handler threads and while a snapshot block holds an older catalog; and the
thread pool and read slots the handlers run on (knowledge.server.pool) behave as the stock ones; reads run
on their own lanes, and a call that marks a wait as blocking lets the calls queued behind it run."""

from __future__ import annotations

import threading
from concurrent import futures

import pytest
from remote_fixture import ServedStore

from knowledge.errors import Unauthenticated
from knowledge.server.calls import TOKENS_CACHED_MAX
from knowledge.server.pool import HandlerPool, Slots, blocking


def fill(store) -> None:
    store.define_node_type("Doc", key="name", properties={"n": "int"})
    with store.session().transaction() as tx:
        tx.upsert_nodes("Doc", [{"name": f"d{i}", "n": i, "_labels": ["public" if i % 2 else "secret"]}
                                for i in range(10)])
    store.create_principal("reader", read=["public"])
    store.create_principal("other", read=["public"])


@pytest.fixture
def served(tmp_path):
    server = ServedStore(str(tmp_path / "store"))
    fill(server.store)
    yield server
    server.close()


def calls_from_threads(client, count: int = 8) -> list[BaseException | int]:
    """`count()` from several threads at once (so several handler threads each see the token)."""
    out: list[BaseException | int] = []

    def one() -> None:
        try:
            out.append(client.session().count())
        except BaseException as exc:  # noqa: BLE001 - collected for the assertions
            out.append(exc)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return out


def test_revoked_and_dropped_tokens_fail_on_the_next_call(served):
    first, second = served.store.issue_token("reader"), served.store.issue_token("reader")
    other = served.store.issue_token("other")
    with served.client(token=first) as a, served.client(token=second) as b, served.client(token=other) as c:
        assert calls_from_threads(a) == [5] * 8 and b.session().count() == 5 and c.session().count() == 5
        served.store.grant("reader", read=["secret"])  # a grant change: the same token sees more at once
        assert a.session().count() == 10
        served.store.revoke_tokens("reader")
        for client in (a, b):
            assert all(isinstance(r, Unauthenticated) for r in calls_from_threads(client))
        assert c.session().count() == 5  # another principal's token is untouched
        fresh = served.store.issue_token("reader")
        with served.client(token=fresh) as d:
            assert d.session().count() == 10
        with pytest.raises(Unauthenticated):
            a.session().count()  # the old token stays revoked after a new one is issued
        served.store.drop_principal("other")
        with pytest.raises(Unauthenticated):
            c.session().count()


def test_revocation_applies_while_a_snapshot_holds_the_old_catalog(served):
    token = served.store.issue_token("reader")
    with served.client(token=token) as client:
        assert client.session().count() == 5
        with served.store.session().snapshot():  # an open read view: the revocation forks the catalog
            served.store.revoke_tokens("reader")
            with pytest.raises(Unauthenticated):
                client.session().count()
        with pytest.raises(Unauthenticated):
            client.session().count()


def test_the_token_cache_stays_bounded(served):
    calls = served.server.calls
    token = served.store.issue_token("reader")
    for i in range(TOKENS_CACHED_MAX + 10):
        calls._tokens[f"Bearer fake{i}"] = served.store.catalog.principals["reader"]  # as if authenticated
    with served.client(token=token) as client:
        assert client.session().count() == 5
    assert len(calls._tokens) <= TOKENS_CACHED_MAX
    with served.client(token="kn_unknown") as forged, pytest.raises(Unauthenticated):
        forged.session().count()


def test_handler_pool_runs_calls_and_callbacks():
    pool = HandlerPool(max_workers=2, thread_name_prefix="test-pool", initializer=threading.local)
    try:
        seen: list[int] = []
        calls = [pool.submit(lambda i=i: i * i) for i in range(20)]
        for call in calls:
            call.add_done_callback(lambda done: seen.append(done.result()))
        assert [c.result(timeout=10) for c in calls] == [i * i for i in range(20)]
        assert sorted(seen) == sorted(i * i for i in range(20))
        assert len(pool._threads) <= 2
        failing = pool.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failing.result(timeout=10)
        assert isinstance(failing.exception(), ZeroDivisionError) and failing.done()
        gate = threading.Event()
        blocked = pool.submit(gate.wait)
        with pytest.raises(futures.TimeoutError):
            blocked.result(timeout=0.01)
        gate.set()
        assert blocked.result(timeout=10) is True
    finally:
        pool.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        pool.submit(int)


def test_slots_bound_holders():
    slots = Slots(2)
    assert slots.acquire(0) and slots.acquire(None)
    assert not slots.acquire(0) and not slots.acquire(0.01)
    slots.release()
    assert slots.acquire(0)


def test_handler_threads_end_with_the_pool():
    pool = HandlerPool(max_workers=3, thread_name_prefix="test-ending")
    calls = [pool.submit(threading.Event().wait, 0.05) for _ in range(3)]
    assert all(c.result(timeout=10) is False for c in calls)
    threads = list(pool._threads)
    assert threads and all(t.is_alive() for t in threads)
    pool.shutdown(wait=True)
    assert not any(t.is_alive() for t in threads)
    collected = HandlerPool(max_workers=2, thread_name_prefix="test-collected")
    collected.submit(int).result(timeout=10)
    threads = list(collected._threads)
    del collected  # no shutdown: collecting the pool ends its idle threads too
    for thread in threads:
        thread.join(timeout=10)
    assert not any(t.is_alive() for t in threads)


def test_a_blocking_wait_lets_the_queued_calls_run():
    pool = HandlerPool(max_workers=1, thread_name_prefix="test-blocking")
    release = threading.Event()

    def waits(mark: bool) -> bool:
        if not mark:
            return release.wait(10)
        with blocking():
            return release.wait(10)

    try:
        first = pool.submit(waits, True)
        second = pool.submit(int, "7")
        assert second.result(timeout=5) == 7  # ran on a thread the blocked call lent, while it still waits
        assert not first.done()
        release.set()
        assert first.result(timeout=5) is True
        release.clear()
        unmarked = pool.submit(waits, False)
        queued = pool.submit(int, "8")
        with pytest.raises(futures.TimeoutError):
            queued.result(timeout=0.3)  # one thread, held by a wait not marked blocking: the next call waits
        release.set()
        assert unmarked.result(timeout=5) is True and queued.result(timeout=5) == 8
        for _ in range(50):  # back to one thread once the lent one has finished its call
            if len(pool._threads) == 1:
                break
            threading.Event().wait(0.05)
        assert len(pool._threads) == 1
    finally:
        release.set()
        pool.shutdown(wait=True)
    assert blocking().__enter__() is None  # outside a pool thread: nothing to lend


def test_reads_run_on_the_read_lanes_and_a_stopped_server_leaves_no_threads(tmp_path):
    served = ServedStore(str(tmp_path / "store"))
    fill(served.store)
    server = served.server
    assert set(server.lanes) == {"light", "heavy"}
    with served.client() as client:
        session = client.session()
        assert session.count() == 10
        session.get("Doc", "d0")
        light = {t.name for t in server.lanes["light"]._threads}
        assert light and all(name.startswith("knowledge-light") for name in light)
        assert not server.executor._threads  # no read went to the main pool
        session.scan("Doc")
        assert server.lanes["heavy"]._threads
        with session.transaction() as tx:
            tx.upsert_nodes("Doc", [{"name": "d10", "n": 10, "_labels": ["public"]}])
        assert server.executor._threads  # writes run on the main pool
    threads = [t for pool in (server.executor, *server.lanes.values()) for t in pool._threads]
    served.close()
    for thread in threads:
        thread.join(timeout=10)
    assert threads and not any(t.is_alive() for t in threads)


def test_serving_process_sets_and_restores_the_switch_interval():
    """`knowledge serve`, plain and replicated, runs under ServerConfig.gil_switch_ms and gives the old
    interval back when it stops."""
    import sys

    from knowledge.server import ServerConfig
    from knowledge.server.app import serving_process

    before = sys.getswitchinterval()
    with serving_process(ServerConfig(listen="127.0.0.1:0", gil_switch_ms=2.5)):
        assert abs(sys.getswitchinterval() - 0.0025) < 1e-9
    assert sys.getswitchinterval() == before
