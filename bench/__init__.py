"""The benchmark suite (`python -m bench`, `knowledge bench`): suites ingest, vectors, acl, retrieval,
server and replication, each measured against a baseline in the same run, written as JSON, Markdown and
PNG plots. The single-purpose scripts beside this file (bench/vectors.py, bench/acl.py, ...) keep their
own command lines; the suites live in bench/suites/."""
