"""Index layer: in-memory structures the storage layer feeds and sessions query.

Vector indexes (`vectors.py`, their background jobs, device copies and row buffers), the BM25 keyword
index, the graph adjacency, the background index builder and the snapshot file format they persist in.
It imports only the kernels and base layers (errors, config): an index knows nothing of WAL or tables.
"""
