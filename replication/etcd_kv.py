"""EtcdKV: the election's ConsensusKV over a real etcd (v3 API through its HTTP gateway, etcd3gw).

Leases are etcd leases (TTL in seconds), `create` is a transaction on create_revision == 0,
`compare_and_swap` and `delete_if` are transactions on the value. Any failure to reach etcd raises
Unavailable, which the Elector turns into a step-down once it lasts a lease's length.
"""

from __future__ import annotations

import base64
from typing import Any

from knowledge.errors import InvalidArgument, Unavailable


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class EtcdKV:
    """ConsensusKV on the etcd at `address` ("host:port", plain HTTP)."""

    def __init__(self, address: str, *, timeout_s: float = 2.0) -> None:
        try:
            import etcd3gw
        except ImportError as exc:  # pragma: no cover - an optional dependency
            raise InvalidArgument("automatic failover needs the etcd3gw package (pip install 'knowledge[etcd]')") from exc
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise InvalidArgument(f"--etcd must be HOST:PORT, got {address!r}")
        self._errors = (etcd3gw.exceptions.Etcd3Exception, OSError)
        self.client = etcd3gw.Etcd3Client(host=host, port=int(port), timeout=timeout_s, api_path="/v3/")
        self._leases: dict[int, Any] = {}

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._errors as exc:
            raise Unavailable(f"etcd unreachable: {type(exc).__name__}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - requests raises its own hierarchy (ConnectionError, Timeout)
            if type(exc).__module__.startswith(("requests", "urllib3")):
                raise Unavailable(f"etcd unreachable: {type(exc).__name__}: {exc}") from None
            raise

    def lease_grant(self, ttl: int) -> int:
        lease = self._call(self.client.lease, ttl)
        self._leases[lease.id] = lease
        return int(lease.id)

    def lease_keepalive(self, lease: int) -> bool:
        found = self._leases.get(lease)
        if found is None:
            return False
        alive = self._call(found.refresh) > 0
        if not alive:
            del self._leases[lease]
        return alive

    def get(self, key: str) -> str | None:
        values = self._call(self.client.get, key)
        return values[0].decode() if values else None

    def get_prefix(self, prefix: str) -> dict[str, str]:
        return {meta["key"].decode(): value.decode() for value, meta in self._call(self.client.get_prefix, prefix)}

    def put(self, key: str, value: str, lease: int | None = None) -> None:
        self._call(self.client.put, key, value, lease=self._leases.get(lease) if lease is not None else None)

    def create(self, key: str, value: str, lease: int | None = None) -> bool:
        if lease is not None and lease not in self._leases:
            return False
        return bool(self._call(self.client.create, key, value, lease=self._leases.get(lease) if lease else None))

    def compare_and_swap(self, key: str, expected: str | None, value: str) -> bool:
        """A transaction on the value (and the revision read, so the key's lease is kept as it was)."""
        if expected is None:
            return bool(self._call(self.client.create, key, value))
        found = self._call(self.client.get, key, metadata=True)
        if not found or found[0][0].decode() != expected:
            return False
        meta = found[0][1]
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if int(meta.get("lease", 0) or 0):
            put["lease"] = int(meta["lease"])
        txn = {"compare": [{"key": _b64(key), "result": "EQUAL", "target": "MOD",
                            "mod_revision": int(meta["mod_revision"])}],
               "success": [{"request_put": put}], "failure": []}
        return bool(self._call(self.client.transaction, txn).get("succeeded", False))

    def delete_if(self, key: str, expected: str) -> bool:
        txn = {"compare": [{"key": _b64(key), "result": "EQUAL", "target": "VALUE", "value": _b64(expected)}],
               "success": [{"request_delete_range": {"key": _b64(key)}}], "failure": []}
        return bool(self._call(self.client.transaction, txn).get("succeeded", False))
