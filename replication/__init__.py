"""WAL log shipping, replicas and failover (installed as ``knowledge.replication``). Not yet built."""
