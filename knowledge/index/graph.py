"""In-memory adjacency for one edge type: CSR arrays (forward and reverse) plus a small delta overlay.

Traversal reads the CSR slices and the overlay; the overlay is folded into fresh CSR arrays when
it passes `overlay_edges_max`, or at once for a batch larger than that. Edges whose endpoints
were deleted are left in place and filtered by the caller's visibility mask (dense ids are never
reused), then dropped at the next compaction.
"""

from __future__ import annotations

import numpy as np

EMPTY = np.zeros(0, dtype=np.int64)
BASE_WIDTH = 1 << 31  # ids below 2**31 pack (src, dst) into one int64 key


def unique_sorted(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (a sort and a neighbour compare: faster than np.unique's hashing here)."""
    out = np.sort(values)
    if len(out) < 2:
        return out
    keep = np.empty(len(out), dtype=bool)
    keep[0] = True
    np.not_equal(out[1:], out[:-1], out=keep[1:])
    return out[keep]


class Csr:
    """Compressed sparse rows over dense node ids: row i's neighbours are indices[indptr[i]:indptr[i+1]]."""

    __slots__ = ("indptr", "indices")

    def __init__(self, indptr: np.ndarray, indices: np.ndarray) -> None:
        self.indptr = indptr
        self.indices = indices

    @classmethod
    def build(cls, rows: np.ndarray, cols: np.ndarray, nodes: int) -> Csr:
        """CSR of the distinct pairs (rows[i], cols[i]); rows must be < nodes; neighbours come out sorted."""
        packed = unique_sorted(rows.astype(np.int64) * np.int64(nodes) + cols)
        rows, cols = packed // nodes, packed % nodes
        counts = np.bincount(rows, minlength=nodes)
        indptr = np.zeros(nodes + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(indptr, cols)

    @property
    def nodes(self) -> int:
        return len(self.indptr) - 1

    def row(self, node: int) -> np.ndarray:
        if node >= self.nodes:
            return EMPTY
        return self.indices[self.indptr[node]:self.indptr[node + 1]]

    def gather(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(origin, neighbour) pairs for every node in `nodes` (vectorised)."""
        nodes = nodes[nodes < self.nodes]
        starts = self.indptr[nodes]
        lengths = self.indptr[nodes + 1] - starts
        total = int(lengths.sum())
        if total == 0:
            return EMPTY, EMPTY
        origin = np.repeat(nodes, lengths)
        offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(total)
        return origin, self.indices[offsets]

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        rows = np.repeat(np.arange(self.nodes, dtype=np.int64), np.diff(self.indptr))
        return rows, self.indices


class EdgeIndex:
    """Forward and reverse adjacency of one edge type, with an overlay for recent writes."""

    def __init__(self, overlay_edges_max: int = 65_536) -> None:
        self.overlay_edges_max = overlay_edges_max
        self.forward = Csr(np.zeros(1, dtype=np.int64), EMPTY)
        self.reverse = Csr(np.zeros(1, dtype=np.int64), EMPTY)
        self._added_out: dict[int, set[int]] = {}
        self._added_in: dict[int, set[int]] = {}
        self._removed: set[tuple[int, int]] = set()
        self._overlay_pairs: tuple[np.ndarray, np.ndarray] | None = None
        self.overlay_edges = 0
        self.edge_count = 0
        self._base_packed: np.ndarray | None = None

    def _in_base(self, src: int, dst: int) -> bool:
        row = self.forward.row(src)
        pos = np.searchsorted(row, dst)
        return bool(pos < len(row) and row[pos] == dst) and (src, dst) not in self._removed

    def has(self, src: int, dst: int) -> bool:
        return dst in self._added_out.get(src, ()) or self._in_base(src, dst)

    def add(self, src: np.ndarray, dst: np.ndarray, node_capacity: int) -> None:
        """Insert edges (existing pairs stay single)."""
        if len(src) > self.overlay_edges_max:
            self._rebuild(node_capacity, extra=(src, dst))
            return
        for s, d in zip(src.tolist(), dst.tolist(), strict=True):
            if (s, d) in self._removed:
                self._removed.discard((s, d))
                self.edge_count += 1
                continue
            if self.has(s, d):
                continue
            self._added_out.setdefault(s, set()).add(d)
            self._added_in.setdefault(d, set()).add(s)
            self.overlay_edges += 1
            self.edge_count += 1
        self._after_change(node_capacity)

    def remove(self, src: np.ndarray, dst: np.ndarray, node_capacity: int) -> None:
        """Delete edges (absent pairs are ignored)."""
        for s, d in zip(src.tolist(), dst.tolist(), strict=True):
            out = self._added_out.get(s)
            if out is not None and d in out:
                out.discard(d)
                self._added_in[d].discard(s)
                self.overlay_edges -= 1
                self.edge_count -= 1
            elif self._in_base(s, d):
                self._removed.add((s, d))
                self.overlay_edges += 1
                self.edge_count -= 1
        self._after_change(node_capacity)

    def _after_change(self, node_capacity: int) -> None:
        self._overlay_pairs = None
        if self.overlay_edges > self.overlay_edges_max:
            self._rebuild(node_capacity)

    def _rebuild(self, node_capacity: int, extra: tuple[np.ndarray, np.ndarray] | None = None,
                 alive: np.ndarray | None = None) -> None:
        src, dst = self.all_pairs()
        if extra is not None:
            src = np.concatenate([src, extra[0].astype(np.int64)])
            dst = np.concatenate([dst, extra[1].astype(np.int64)])
        if alive is not None and len(src):
            keep = alive[src] & alive[dst]
            src, dst = src[keep], dst[keep]
        self.forward = Csr.build(src, dst, node_capacity)
        src, dst = self.forward.pairs()
        self.reverse = Csr.build(dst, src, node_capacity)
        self._added_out.clear()
        self._added_in.clear()
        self._removed.clear()
        self._overlay_pairs = None
        self.overlay_edges = 0
        self.edge_count = len(src)
        self._base_packed = None

    def contains_any(self, src: np.ndarray, dst: np.ndarray) -> bool:
        """Whether any (src[i], dst[i]) is a live edge (vectorised: binary search in the sorted base)."""
        if self.edge_count == 0 or not len(src):
            return False
        if self._base_packed is None:
            rows, cols = self.forward.pairs()
            self._base_packed = rows * np.int64(BASE_WIDTH) + cols  # sorted: CSR rows and columns are
        probe = src.astype(np.int64) * np.int64(BASE_WIDTH) + dst
        at = np.searchsorted(self._base_packed, probe)
        hit = at < len(self._base_packed)
        hit[hit] = self._base_packed[at[hit]] == probe[hit]
        if self._removed and hit.any():
            hit[hit] = [(s, d) not in self._removed for s, d in zip(src[hit].tolist(), dst[hit].tolist(), strict=True)]
        if hit.any():
            return True
        return any(d in self._added_out.get(s, ()) for s, d in zip(src.tolist(), dst.tolist(), strict=True)) \
            if self._added_out else False

    def compact(self, node_capacity: int, alive: np.ndarray) -> None:
        """Fold the overlay into the CSR and drop edges of deleted nodes."""
        self._rebuild(node_capacity, alive=alive)

    def all_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Every live (src, dst) pair, base and overlay."""
        src, dst = self.forward.pairs()
        if self._removed:
            gone = np.array(sorted(self._removed), dtype=np.int64).reshape(-1, 2)
            mask = ~_pair_isin(src, dst, gone[:, 0], gone[:, 1])
            src, dst = src[mask], dst[mask]
        add_src, add_dst = self._overlay()
        return np.concatenate([src, add_src]), np.concatenate([dst, add_dst])

    def _overlay(self) -> tuple[np.ndarray, np.ndarray]:
        if self._overlay_pairs is None:
            pairs = [(s, d) for s, ds in self._added_out.items() for d in ds]
            arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
            self._overlay_pairs = (arr[:, 0].copy(), arr[:, 1].copy())
        return self._overlay_pairs

    def neighbours(self, node: int, outgoing: bool) -> np.ndarray:
        """Neighbour ids of one node (unfiltered, may include deleted nodes)."""
        base = (self.forward if outgoing else self.reverse).row(node)
        if self._removed:
            base = np.array([n for n in base.tolist()
                             if ((node, n) if outgoing else (n, node)) not in self._removed], dtype=np.int64)
        added = (self._added_out if outgoing else self._added_in).get(node)
        if added:
            return np.concatenate([base, np.fromiter(added, dtype=np.int64, count=len(added))])
        return base

    def expand(self, nodes: np.ndarray, outgoing: bool) -> tuple[np.ndarray, np.ndarray]:
        """(origin, neighbour) pairs of every node in `nodes` (unfiltered)."""
        csr = self.forward if outgoing else self.reverse
        origin, nbr = csr.gather(nodes)
        if self._removed and len(origin):
            gone = np.array(sorted(self._removed), dtype=np.int64).reshape(-1, 2)
            s, d = (origin, nbr) if outgoing else (nbr, origin)
            keep = ~_pair_isin(s, d, gone[:, 0], gone[:, 1])
            origin, nbr = origin[keep], nbr[keep]
        if self._added_out:
            add_src, add_dst = self._overlay()
            o, n = (add_src, add_dst) if outgoing else (add_dst, add_src)
            sel = np.isin(o, nodes)
            if sel.any():
                origin = np.concatenate([origin, o[sel]])
                nbr = np.concatenate([nbr, n[sel]])
        return origin, nbr


def _pair_isin(src: np.ndarray, dst: np.ndarray, gone_src: np.ndarray, gone_dst: np.ndarray) -> np.ndarray:
    width = np.int64(max(int(src.max(initial=0)), int(dst.max(initial=0)), int(gone_src.max(initial=0)),
                         int(gone_dst.max(initial=0))) + 1)
    return np.isin(src * width + dst, gone_src * width + gone_dst)
