"""The gRPC server (`knowledge serve`) and the wire protocol shared with knowledge.remote."""
