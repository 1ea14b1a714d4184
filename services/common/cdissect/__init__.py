"""Generated gRPC stubs for cdissect.v1 (make protos)."""
