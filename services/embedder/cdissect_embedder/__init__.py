"""cdissect_embedder."""
