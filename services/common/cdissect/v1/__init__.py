"""Generated from protos/cdissect/v1 by `make protos`; do not edit."""
