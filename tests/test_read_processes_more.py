"""More of `knowledge serve --read-processes N`, as real processes on real sockets: TLS and mTLS in every
process, an encrypted store (the key reaches the read processes through $KNOWLEDGE_ENCRYPTION_KEY_FILE),
one commit of 20,000 rows read at once from every connection, the change feed through read processes
against the embedded store's, a non-admin's view LSN the same everywhere, and token or grant revocations
taking effect on every connection as soon as the call returns.

Connections spread over the processes by the kernel (SO_REUSEPORT); `connected` opens clients until /proc
shows every process of the group holding one of them, so "from every connection" means "from every process".

Three tests hold bugs found here and fixed since: forwarded calls without a deadline failed at once with
DEADLINE_EXCEEDED; a read process's copy answered a non-admin's view LSN from its tables only (lower than the
serving process's) until the next visible write; a token was checked against a read process's catalog before the
read waited for that process to catch up, so a revoked token still read and a just-issued one was refused while
the read process was behind."""

from __future__ import annotations

import os
import random
import threading

import pytest
from server_certs import CertificateAuthority
from test_read_processes import ESTABLISHED, port_sockets, prepare, process_sockets, reader_pids
from test_server_cli import Serve

import knowledge
from knowledge.config import KEY_FILE_ENV
from knowledge.errors import EncryptionKeyMissing, NotFound, Unauthenticated, Unavailable
from knowledge.remote import TLS

CONNECTIONS = 12
REFUSED = 24  # refused clients: with 3 processes, the chance that one gets none of them is 3 * (2/3)**24 < 1e-4


def group_pids(server: Serve) -> list[int]:
    """The processes that accept on the server's address: its read processes (the serving process only holds
    the port)."""
    return reader_pids(server)


def accepted_by(pid: int, port: int, inodes: set[str] | None = None) -> int:
    """How many of the connections accepted on `port` process `pid` holds."""
    inodes = port_sockets(port, ESTABLISHED) if inodes is None else inodes
    return len(process_sockets(pid) & inodes)


def spread(server: Serve) -> dict[int, int]:
    """Established TCP connections to the server's port held by each process of the group (pid -> count)."""
    port = int(server.address.rsplit(":", 1)[1])
    inodes = port_sockets(port, ESTABLISHED)
    return {pid: accepted_by(pid, port, inodes) for pid in group_pids(server)}


def connected(server: Serve, token: str, count: int = CONNECTIONS, *, address: str | None = None,
              **options) -> list:
    """At least `count` clients, each connected (one call made; connecting is lazy), more until every read
    process holds one of them (the kernel spreads connections at random: 12 over 2 processes miss one
    about 0.05% of the time); the serving process accepted none of them."""
    conns: list = []
    options.setdefault("timeout_s", 30)
    try:
        while len(conns) < count or not all(spread(server).values()):
            assert len(conns) < 10 * count, f"connections per process: {spread(server)}"
            conn = knowledge.connect(address or server.address, token=token, **options)
            conns.append(conn)
            conn.memory_lsn  # noqa: B018 - a GetSchema call
    except BaseException:
        close_all(conns)
        raise
    assert len(spread(server)) == len(reader_pids(server))
    assert not accepted_by(server.process.pid, int(server.address.rsplit(":", 1)[1])), \
        "the serving process accepted a connection on the read address"
    return conns


def close_all(conns: list) -> None:
    for conn in conns:
        conn.close()


# -- 1. TLS and mTLS ----------------------------------------------------------------------------------------

def _refused(address: str, token: str, tls) -> None:
    for _ in range(REFUSED):
        with knowledge.connect(address, token=token, tls=tls, timeout_s=5) as conn:
            with pytest.raises(Unavailable):
                conn.session().count("Doc")


@pytest.mark.parametrize("mtls", [False, True], ids=["tls", "mtls"])
def test_tls_and_mtls_in_every_process(tmp_path, mtls):
    path = str(tmp_path / "store")
    admin, _ = prepare(path)
    os.makedirs(tmp_path / "certs")
    ca = CertificateAuthority(str(tmp_path / "certs"))
    cert, key = ca.issue("server", server=True)
    client_cert, client_key = ca.issue("client")
    extra = ["--client-ca", ca.path] if mtls else []
    server = Serve(path, "--read-processes", "2", "--tls-cert", cert, "--tls-key", key, *extra)
    address = "localhost:" + server.address.rsplit(":", 1)[1]
    tls = TLS(ca=ca.path, cert=client_cert, key=client_key) if mtls else TLS(ca=ca.path)
    try:
        assert len(reader_pids(server)) == 2
        conns = connected(server, admin, address=address, tls=tls)
        try:
            for i, conn in enumerate(conns):  # every connection writes (forwarded from a read process) ...
                conn.session().transaction().upsert_nodes("Doc", [{"name": f"t{i}", "n": 1000 + i}]).commit()
            keys = [f"t{i}" for i in range(len(conns))]
            for conn in conns:  # ... and reads every connection's write
                got = conn.session().get_many("Doc", keys, columns=["n"])
                assert sorted(got.column("n").to_pylist()) == [1000 + i for i in range(len(conns))]
                assert conn.session().count("Doc") == 9 + len(conns)
        finally:
            close_all(conns)
        if mtls:
            _refused(address, admin, TLS(ca=ca.path))  # no client certificate
            os.makedirs(tmp_path / "other")
            other = CertificateAuthority(str(tmp_path / "other"), name="other-ca")
            stranger_cert, stranger_key = other.issue("client")
            _refused(address, admin, TLS(ca=ca.path, cert=stranger_cert, key=stranger_key))  # another CA's
        _refused(address, admin, None)  # plaintext
    finally:
        code, _, err = server.stop()
    assert code == 0, err


# -- 2. an encrypted store ----------------------------------------------------------------------------------

def test_encrypted_store_served_with_a_read_process(tmp_path, monkeypatch):
    key_file = tmp_path / "key"
    key_file.write_text(os.urandom(32).hex() + "\n")
    monkeypatch.setenv(KEY_FILE_ENV, str(key_file))  # what `knowledge serve` (and its read processes) read
    path = str(tmp_path / "store")
    admin, _ = prepare(path)  # encrypted: StoreConfig() takes the key file from the environment
    monkeypatch.delenv(KEY_FILE_ENV)
    with pytest.raises(EncryptionKeyMissing):
        knowledge.open(path)
    with pytest.raises(AssertionError, match="encrypted"):  # no key: serve refuses, saying why
        Serve(path, "--read-processes", "1")
    monkeypatch.setenv(KEY_FILE_ENV, str(key_file))
    server = Serve(path, "--read-processes", "1")
    try:
        assert len(reader_pids(server)) == 1
        conns = connected(server, admin)
        try:
            for round_ in range(3):
                for i, conn in enumerate(conns):
                    conn.session().transaction().upsert_nodes(
                        "Doc", [{"name": f"e{round_}-{i}", "n": i, "body": f"sealed {round_} {i}"}]).commit()
                    for reader in (conns[(i + 1) % len(conns)], conns[(i + 5) % len(conns)]):
                        row = reader.session().get("Doc", f"e{round_}-{i}", columns=["n"])
                        assert row is not None and row["n"] == i
                conns[0].checkpoint()  # new encrypted segments and snapshots; the read process follows on
            for conn in conns:
                assert conn.session().count("Doc") == 9 + 3 * len(conns)
                assert conn.session().keyword_search("sealed", k=1000).num_rows == 3 * len(conns)
            written = 3 * len(conns)
        finally:
            close_all(conns)
    finally:
        code, _, err = server.stop()
    assert code == 0, err
    monkeypatch.delenv(KEY_FILE_ENV)
    with pytest.raises(EncryptionKeyMissing):  # still encrypted after serving
        knowledge.open(path)
    with knowledge.open(path, config=knowledge.StoreConfig(encryption_key_file=str(key_file))) as store:
        assert store.session().count("Doc") == 9 + written


# -- 3. a big write -----------------------------------------------------------------------------------------

BIG = 20_000


def test_one_big_commit_is_read_at_once_everywhere(tmp_path):
    path = str(tmp_path / "store")
    admin, _ = prepare(path)
    server = Serve(path, "--read-processes", "2")
    try:
        conns = connected(server, admin)
        try:
            rows = [{"name": f"b{i}", "n": i, "body": f"bulk row {i}", "emb": [float(i % 97), 2.0]}
                    for i in range(BIG)]
            conns[0].session().transaction().upsert_nodes("Doc", rows).commit()
            errors: list[str] = []

            def check(conn, seed: int) -> None:  # all at once, right after the acknowledgement
                try:
                    assert conn.session().count("Doc") == 9 + BIG
                    sample = sorted({*random.Random(seed).sample(range(BIG), 500), 0, BIG - 1})
                    got = conn.session().get_many("Doc", [f"b{i}" for i in sample], columns=["n"])
                    assert sorted(got.column("n").to_pylist()) == sample
                except Exception as exc:  # noqa: BLE001 - reported below
                    errors.append(f"{type(exc).__name__}: {exc}")

            threads = [threading.Thread(target=check, args=(conn, n)) for n, conn in enumerate(conns)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
            assert not errors, errors
            second = [{"name": f"c{i}", "n": i} for i in range(BIG)]  # a second one, read in turn
            conns[1].session().transaction().upsert_nodes("Doc", second).commit()
            for conn in conns:
                assert conn.session().count("Doc") == 9 + 2 * BIG
                assert conn.session().get("Doc", f"c{BIG - 1}", columns=["n"])["n"] == BIG - 1
        finally:
            close_all(conns)
    finally:
        server.stop()


# -- 4. the change feed -------------------------------------------------------------------------------------

def _records(records) -> list:
    """Comparable form of change records (knowledge.remote.ChangeRecord)."""
    out = []
    for record in records:
        changes = [(c.kind, c.type, c.table.to_pylist() if c.table is not None else None, c.document)
                   for c in record.changes]
        out.append((record.lsn, record.epoch, record.timestamp_ns, changes))
    return out


def _embedded_records(session, after_lsn: int) -> list:
    """The change feed of an embedded store's session (the server's own code), in the client's form."""
    import json

    from knowledge.remote import Change, ChangeRecord
    from knowledge.server import wire
    from knowledge.server.changes import stream
    out = []
    for record in stream(session, after_lsn, False, threading.Event(), 0.05, lambda: True):
        out.append(ChangeRecord(record.lsn, record.epoch, record.timestamp_ns, [
            Change(c.kind, c.type, wire.table_from_ipc(c.arrow_ipc) if c.arrow_ipc else None,
                   json.loads(c.document_json) if c.document_json else None) for c in record.changes]))
    return _records(out)


def _follow(conn, after_lsn: int, count: int, out: list, errors: list) -> None:
    got = []
    try:
        for record in conn.changes(after_lsn=after_lsn, follow=True, timeout_s=60):
            got.append(record)
            if len(got) == count:
                break
    except Exception as exc:  # noqa: BLE001 - reported by the test
        errors.append(f"{type(exc).__name__}: {exc}")
    out.append(got)


def test_change_feed_through_read_processes_matches_the_embedded_store(tmp_path):
    path = str(tmp_path / "store")
    admin, reader = prepare(path)
    with knowledge.open(path) as store:
        start = store.memory_lsn
    server = Serve(path, "--read-processes", "2")
    try:
        admins = connected(server, admin)
        readers = connected(server, reader)
        try:
            followed: list[list] = []
            errors: list[str] = []
            writes = 8
            feeds = [threading.Thread(target=_follow, args=(conn, start, writes, followed, errors))
                     for conn in admins]  # following feeds, from every process, while the writes go on
            for feed in feeds:
                feed.start()
            commits = []
            for i in range(writes):  # public and secret rows, a delete, a grant change, a schema change
                writer = admins[i % len(admins)]
                if i == 3:
                    commits.append(writer.session().transaction().delete_nodes("Doc", ["d1", "d3"]).commit())
                elif i == 5:
                    writer.grant("reader", read=["extra"])
                    commits.append(writer.memory_lsn)
                elif i == 6:
                    commits.append(writer.define_node_type("Note", key="title", properties={"body": "text"}))
                else:
                    commits.append(writer.session().transaction().upsert_nodes("Doc", [
                        {"name": f"f{i}", "n": i, "_labels": ["secret" if i % 2 else "public"]}]).commit())
            for feed in feeds:
                feed.join(60)
            assert not errors, errors
            everything = [_records(conn.changes(after_lsn=start, timeout_s=30)) for conn in admins]
            visible = [_records(conn.changes(after_lsn=start, timeout_s=30)) for conn in readers]
            later = [_records(conn.changes(after_lsn=commits[4], timeout_s=30)) for conn in admins]
        finally:
            close_all(admins)
            close_all(readers)
    finally:
        code, _, err = server.stop()
    assert code == 0, err
    with knowledge.open(path) as store:
        expected_all = _embedded_records(store.session(), start)
        expected_visible = _embedded_records(store.session("reader"), start)
        expected_later = _embedded_records(store.session(), commits[4])
    assert [r[0] for r in expected_all] == commits
    assert 0 < len(expected_visible) < len(expected_all)  # the secret rows' records and the grant left out
    assert all(got == expected_all for got in everything)
    assert all(got == expected_visible for got in visible)
    assert all(got == expected_later for got in later) and len(expected_later) == 3
    assert len(followed) == len(admins) and all(_records(got) == expected_all for got in followed)


def test_forwarded_calls_without_a_deadline(tmp_path):
    path = str(tmp_path / "store")
    admin, _ = prepare(path)
    with knowledge.open(path) as store:
        start = store.memory_lsn
    server = Serve(path, "--read-processes", "2")
    try:
        conns = connected(server, admin, timeout_s=None)  # connect(timeout_s=None): "None: none"
        try:
            outcomes = []
            for i, conn in enumerate(conns):
                try:
                    conn.session().transaction().upsert_nodes("Doc", [{"name": f"n{i}", "n": i}]).commit()
                    outcomes.append(len(list(conn.changes(after_lsn=start))))  # changes(): no timeout_s by default
                except Exception as exc:  # noqa: BLE001 - compared below
                    outcomes.append(type(exc).__name__)
            assert outcomes == list(range(1, len(conns) + 1))
        finally:
            close_all(conns)
    finally:
        server.stop()


# -- 5. a non-admin's view LSN ------------------------------------------------------------------------------

def _view_lsns(conns) -> set[int]:
    return {conn.session().stats()["lsn"] for conn in conns}


def test_non_admin_view_lsn_is_the_same_everywhere_and_the_embedded_stores(tmp_path):
    path = str(tmp_path / "store")
    admin, reader = prepare(path)
    server = Serve(path, "--read-processes", "2")
    try:
        conns = connected(server, reader)
        root = knowledge.connect(server.address, token=admin, timeout_s=30)
        try:
            public = root.session().transaction().upsert_nodes(
                "Doc", [{"name": "p1", "n": 1, "_labels": ["public"]}]).commit()
            assert _view_lsns(conns) == {public}
            secret = root.session().transaction().upsert_nodes(
                "Doc", [{"name": "s1", "n": 1, "_labels": ["secret"]}]).commit()
            assert secret > public and _view_lsns(conns) == {public}  # an invisible write does not move it
            deleted = root.session().transaction().delete_nodes("Doc", ["d2"]).commit()  # public: no row left
            assert _view_lsns(conns) == {deleted}
            root.session().transaction().delete_nodes("Doc", ["s1", "d3"]).commit()  # secret ones: invisible
            root.session().transaction().upsert_nodes("Doc", [{"name": "s2", "_labels": ["secret"]}]).commit()
            assert _view_lsns(conns) == {deleted}
            root.create_principal("someone", read=["public"])
            assert _view_lsns(conns) == {deleted}  # another principal's change: invisible to this one
            root.grant("reader", read=["extra"])  # its own grant change: visible to it
            granted = root.memory_lsn
            assert granted > deleted and _view_lsns(conns) == {granted}
            last = _view_lsns(conns)
        finally:
            close_all(conns)
            root.close()
    finally:
        code, _, err = server.stop()
    assert code == 0, err
    with knowledge.open(path) as store:
        assert {store.session("reader").stats()["lsn"]} == last


def test_non_admin_view_lsn_at_start_is_the_serving_processes(tmp_path):
    path = str(tmp_path / "store")
    _, reader = prepare(path)
    with knowledge.open(path) as store:  # a delete of a visible row, which leaves no row behind
        store.session().transaction().delete_nodes("Doc", ["d1"]).commit()
        store.session().transaction().upsert_nodes("Doc", [{"name": "s-early", "_labels": ["secret"]}]).commit()
        before = store.session("reader").stats()["lsn"]
    server = Serve(path, "--read-processes", "2")
    try:
        conns = connected(server, reader)
        try:
            assert _view_lsns(conns) == {before}
        finally:
            close_all(conns)
    finally:
        server.stop()


# -- 6. revocations take effect everywhere at once ----------------------------------------------------------

def _outcomes(conns) -> list[str]:
    out = []
    for conn in conns:
        try:
            out.append(f"count={conn.session().count('Doc')}")
        except Unauthenticated:
            out.append("unauthenticated")
    return out


def test_revoked_grant_takes_effect_on_every_connection_and_tokens_follow(tmp_path):
    path = str(tmp_path / "store")
    admin, reader = prepare(path)
    server = Serve(path, "--read-processes", "2")
    try:
        root = knowledge.connect(server.address, token=admin, timeout_s=30)
        conns = connected(server, reader)
        try:
            assert _outcomes(conns) == ["count=6"] * len(conns)
            for _ in range(3):
                # a read grant taken away through one connection: hidden on every connection at once
                root.revoke("reader", read=["public"])
                for conn in conns:
                    assert conn.session().count("Doc") == 0
                    with pytest.raises(NotFound):
                        conn.session().get("Doc", "d1")
                    assert conn.session().search([1.0, 1.0], k=9, type="Doc").num_rows == 0
                # and given back: visible on every connection at once
                root.grant("reader", read=["public"])
                assert [conn.session().count("Doc") for conn in conns] == [6] * len(conns)
            # the principal's tokens revoked, a principal dropped: refused by every process (with a read
            # process behind too: test_token_changes_take_effect_everywhere_while_read_processes_are_busy)
            root.create_principal("temp", read=["public"])
            temp = connected(server, root.issue_token("temp"))
            try:
                assert _outcomes(temp) == ["count=6"] * len(temp)
                root.revoke_tokens("reader")
                root.drop_principal("temp")
                assert _outcomes(conns) == ["unauthenticated"] * len(conns)  # at once, on every process
                assert _outcomes(temp) == ["unauthenticated"] * len(temp)
            finally:
                close_all(temp)
        finally:
            root.close()
            close_all(conns)
    finally:
        server.stop()


def test_token_changes_take_effect_everywhere_while_read_processes_are_busy(tmp_path):
    """The same right after a big commit, which the read processes are still applying when the token change
    returns: the token has to be checked against a catalog that has caught up with the serving process."""
    path = str(tmp_path / "store")
    admin, reader = prepare(path)
    server = Serve(path, "--read-processes", "2")
    try:
        root = knowledge.connect(server.address, token=admin, timeout_s=30)
        conns = connected(server, reader)
        try:
            assert _outcomes(conns) == ["count=6"] * len(conns)
            outcomes = {}
            for what in ("issued", "revoked"):
                rows = [{"name": f"{what}{i}", "n": i, "body": f"bulk {i}", "_labels": ["secret"]}
                        for i in range(BIG)]
                root.session().transaction().upsert_nodes("Doc", rows).commit()
                if what == "issued":  # a token issued: usable on new connections to every process at once
                    fresh = root.issue_token("reader")
                    new = [knowledge.connect(server.address, token=fresh, timeout_s=30) for _ in conns]
                    try:
                        outcomes[what] = _outcomes(new)
                    finally:
                        close_all(new)
                else:  # the principal's tokens revoked: refused by every process at once
                    root.revoke_tokens("reader")
                    outcomes[what] = _outcomes(conns)
            assert outcomes == {"issued": ["count=6"] * len(conns), "revoked": ["unauthenticated"] * len(conns)}
        finally:
            root.close()
            close_all(conns)
    finally:
        server.stop()
