"""cdissect_shapes."""
