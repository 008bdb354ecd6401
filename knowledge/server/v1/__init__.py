"""Generated protobuf and gRPC stubs of knowledge.v1 (see knowledge.server.regenerate)."""
