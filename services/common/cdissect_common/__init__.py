"""cdissect_common."""
