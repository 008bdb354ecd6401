"""TLS on the replication links, with certificates made in the test by `cryptography`: two real nodes
serving mTLS replicate a sync(1) commit (acknowledged only once the replica holds it, so the link works
over TLS); plaintext and certificate-less callers are refused; plaintext links to non-loopback peers
and TLS servers without --replication-ca are refused at start with one error line."""

from __future__ import annotations

import pytest
from replication_cluster import Cluster, free_port, missing_keys, seed_store
from server_certs import CertificateAuthority

from knowledge.cli import main
from knowledge.errors import Unavailable
from knowledge.remote.channel import TLS
from knowledge.replication.transport import LinkTLS, control

ZONES = {"a": "z1", "b": "z2"}


@pytest.fixture
def tls_cluster(tmp_path):
    certs = tmp_path / "certs"
    certs.mkdir()
    ca = CertificateAuthority(str(certs))
    node_cert, node_key = ca.issue("node", server=True)  # every node's server and client certificate
    client_cert, client_key = ca.issue("tester")
    cluster = Cluster(str(tmp_path / "cluster"), ZONES, "sync(1)", seed_store)
    cluster.extra_args = ["--tls-cert", node_cert, "--tls-key", node_key, "--client-ca", ca.path,
                          "--replication-ca", ca.path]
    cluster.link_tls = LinkTLS.load(ca.path, client_cert, client_key)
    cluster.client_tls = TLS(ca=ca.path, cert=client_cert, key=client_key)
    cluster.ca = ca  # type: ignore[attr-defined]
    yield cluster
    cluster.close()


def test_nodes_replicate_over_mtls_and_refuse_plaintext_and_anonymous_callers(tls_cluster):
    cluster = tls_cluster
    cluster.start("a", "primary")
    cluster.start("b", "replica", primary="a")
    cluster.wait_ready()
    cluster.wait_for("a to be primary", lambda: cluster.writable("a"))
    with cluster.client("a") as client:
        tx = client.session().transaction()
        tx.upsert_nodes("Doc", [{"name": f"t{i}", "n": i} for i in range(10)])
        lsn = tx.commit()  # sync(1): returns only once b holds it durably, over the TLS link
    cluster.wait_for("b to apply it", lambda: cluster.status("b")["applied_lsn"] >= lsn)
    assert missing_keys(cluster, "b", [f"t{i}" for i in range(10)]) == []
    assert cluster.status("a")["stats"]["commits"] >= 1

    with pytest.raises(Unavailable):  # plaintext to a TLS port
        control(cluster.address("a"), "status", timeout_s=5)
    with pytest.raises(Unavailable):  # TLS without a client certificate: mTLS refuses it
        control(cluster.address("a"), "status", timeout_s=5, tls=LinkTLS.load(cluster.ca.path))
    other = CertificateAuthority(str(cluster.root), name="other-ca")
    with pytest.raises(Unavailable):  # a server certificate from a CA the caller does not trust
        control(cluster.address("a"), "status", timeout_s=5, tls=LinkTLS.load(other.path, *cluster.ca.issue("t2")))


def test_promote_speaks_tls(tls_cluster, capsys, tmp_path):
    cluster = tls_cluster
    cluster.start("a", "primary")
    cluster.wait_ready()
    cert, key = cluster.ca.issue("operator")
    code = main(["promote", "--server", cluster.address("a"), "--tls-ca", cluster.ca.path, "--tls-cert", cert,
                 "--tls-key", key])
    assert code == 0 and '"epoch"' in capsys.readouterr().out


def _error(capsys, argv: list[str]) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 1, (code, captured)
    assert "Traceback" not in captured.err
    return captured.err.strip().splitlines()[-1]


@pytest.mark.parametrize(("members", "extra", "words"), [
    ("a=z1@{me},b=z2@10.1.2.3:7000", [], ["plaintext", "10.1.2.3:7000", "--replication-ca", "--insecure"]),
    ("a=z1@{me},b=z2@127.0.0.1:1", ["--tls-cert", "{cert}", "--tls-key", "{key}"], ["--replication-ca"]),
    ("a=z1@{me},b=z2@127.0.0.1:1", ["--replication-cert", "{cert}"], ["--replication-ca"]),
    ("a=z1@{me},b=z2@127.0.0.1:1", ["--replication-ca", "{missing}"], ["cannot read", "missing.pem"]),
    ("a=z1@{me},b=z2@127.0.0.1:1", ["--wal-retention-max-bytes", "-1"], ["--wal-retention-max-bytes"]),
    ("a=z1@{me},b=z2@127.0.0.1:1", ["--replication-peers", "node"], ["--replication-peers", "--client-ca"]),
])
def test_insecure_or_incomplete_link_settings_are_refused(tmp_path, capsys, members, extra, words):
    ca = CertificateAuthority(str(tmp_path))
    cert, key = ca.issue("node", server=True)
    path = str(tmp_path / "s")
    seed_store(path)
    me = f"127.0.0.1:{free_port()}"
    fill = {"me": me, "cert": cert, "key": key, "missing": str(tmp_path / "missing.pem")}
    argv = ["serve", "--data", path, "--listen", me, "--role", "replica", "--members", members.format(**fill),
            *(x.format(**fill) for x in extra)]
    line = _error(capsys, argv)
    assert all(word in line for word in words), line


def test_replication_peers_admit_only_the_named_certificates(tls_cluster):
    cluster = tls_cluster
    operator_cert, operator_key = cluster.ca.issue("operator")
    cluster.extra_args += ["--replication-peers", "node,operator"]
    cluster.link_tls = LinkTLS.load(cluster.ca.path, operator_cert, operator_key)
    cluster.start("a", "primary")
    cluster.start("b", "replica", primary="a")
    cluster.wait_ready()
    cluster.wait_for("a to be primary", lambda: cluster.writable("a"))
    with cluster.client("a") as client:  # the knowledge service still takes the tester's certificate
        tx = client.session().transaction()
        tx.upsert_nodes("Doc", [{"name": "p1", "n": 1}])
        lsn = tx.commit()  # sync(1) over the links: the nodes' own certificate ("node") is admitted
    cluster.wait_for("b to apply it", lambda: cluster.status("b")["applied_lsn"] >= lsn)
    tester_cert, tester_key = cluster.ca.issue("tester")  # signed by the same CA, but not a named peer
    with pytest.raises(Unavailable, match="PERMISSION_DENIED"):
        control(cluster.address("a"), "status", timeout_s=5, tls=LinkTLS.load(cluster.ca.path, tester_cert,
                                                                                 tester_key))
