"""cdissect_cli."""
