"""The visibility rule: the one filter every read passes.

A node is visible to a principal iff it is alive, not past its TTL deadline (`knowledge/storage/ttl.py`:
an expired node reads as deleted from the moment it expires, before the sweeper deletes it), and the
principal is admin or shares a label with the principal's read grants (unlabelled nodes: admins only). An edge is visible iff both of its
endpoints are. Invisible and absent read the same. The rule works on a bool bitmap over dense node
ids, computed once per (principal, directory version, capacity) and cached; sessions pass every read
through it (`knowledge/session.py`, `knowledge/search.py`).
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import numpy as np

from knowledge.access.principal import Principal

VISIBILITY_CACHE_MAX = 64
_F = TypeVar("_F", bound=Callable[..., Any])


class LabelDirectory(Protocol):
    """What the rule reads of the node directory (`knowledge/storage/directory.py:NodeDirectory`)."""

    alive: np.ndarray
    capacity: int
    version: int
    expired: np.ndarray | None  # nodes past their TTL deadline (None: none); its changes move `version`

    def label_bitmap(self, label: str) -> np.ndarray | None: ...


def visibility_bitmap(directory: LabelDirectory, principal: Principal) -> np.ndarray:
    """The read-only bool bitmap over node ids that `principal` may see in `directory`."""
    alive = live_nodes(directory)
    if principal.admin:
        bitmap = alive
    else:
        bitmap = np.zeros(directory.capacity, dtype=bool)
        for label in principal.read:
            label_bits = directory.label_bitmap(label)
            if label_bits is not None:
                bitmap |= label_bits
        bitmap &= alive
    bitmap.setflags(write=False)
    return bitmap


def live_nodes(directory: LabelDirectory) -> np.ndarray:
    """The bitmap of nodes that exist for every reader: alive and not expired."""
    alive = directory.alive
    expired = getattr(directory, "expired", None)
    if expired is None:
        return alive
    n = min(len(alive), len(expired))
    out = alive.copy()
    out[:n] &= ~expired[:n]
    return out


def with_expired(directory: LabelDirectory, principal: Principal) -> np.ndarray:
    """The bitmap `principal` may see in `directory` as if nothing had expired: what a writer resolves keys
    against, so that it replaces (or deletes) an expired node not yet deleted as it would a live one."""
    return visibility_bitmap(_Unexpired(directory), principal)


class _Unexpired:
    """A directory as the visibility rule sees it with nothing expired."""

    def __init__(self, directory: LabelDirectory) -> None:
        self._directory = directory
        self.alive = directory.alive
        self.capacity = directory.capacity
        self.version = directory.version
        self.expired = None

    def label_bitmap(self, label: str) -> np.ndarray | None:
        return self._directory.label_bitmap(label)


class VisibilityCache:
    """The last VISIBILITY_CACHE_MAX bitmaps, by (principal, directory version, capacity). Not locked:
    the store calls it under its state lock."""

    def __init__(self, entries_max: int = VISIBILITY_CACHE_MAX) -> None:
        self.entries_max = entries_max
        self._bitmaps: OrderedDict[tuple[Any, int, int], np.ndarray] = OrderedDict()

    def bitmap(self, directory: LabelDirectory, principal: Principal) -> np.ndarray:
        """`visibility_bitmap(directory, principal)`, from the cache when the directory is unchanged."""
        cache_key = (principal, directory.version, directory.capacity)
        bitmap = self._bitmaps.get(cache_key)
        if bitmap is not None:
            self._bitmaps.move_to_end(cache_key)
            return bitmap
        bitmap = visibility_bitmap(directory, principal)
        self._bitmaps[cache_key] = bitmap
        while len(self._bitmaps) > self.entries_max:
            self._bitmaps.popitem(last=False)
        return bitmap

    def clear(self) -> None:
        self._bitmaps.clear()

    def __len__(self) -> int:
        return len(self._bitmaps)


def is_visible(visible: np.ndarray, node: int | None) -> bool:
    """Whether node id `node` (None: absent) is set in the bitmap `visible`."""
    return node is not None and node < len(visible) and bool(visible[node])


def visible_nodes(visible: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The ids among `ids` that the bitmap `visible` holds, in their order."""
    ids = ids[ids < len(visible)]
    return ids[visible[ids]]


def visible_edges(visible: np.ndarray, src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (src, dst) pairs whose endpoints are both visible, in their order."""
    keep = (src < len(visible)) & (dst < len(visible))
    src, dst = src[keep], dst[keep]
    keep = visible[src] & visible[dst]
    return src[keep], dst[keep]


def consistent_read(method: _F) -> _F:
    """Run a session read under its store's state lock, so its visibility check and the rows it then
    fetches belong to one LSN: a commit that relabels or rewrites a node cannot land in between (it
    waits). Decorates methods of an object with a `store.state_lock` (`knowledge/session.py:Session`)."""
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self.store.state_lock:
            return method(self, *args, **kwargs)
    return wrapper  # type: ignore[return-value]
