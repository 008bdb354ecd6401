"""Storage layer: the durable state of a store and the path every write takes through it.

The WAL (`wal/`) and its ops (`ops.py`), the schema, the DuckDB tables (`tables.py`) with their rows
and values, key resolution and the node directory, the principal catalog, loading a store on open and
applying records to memory, backup, the directory lock and positions. It may import the access,
index, kernels and base (errors, config) layers, never the API above it (store, session).
"""
