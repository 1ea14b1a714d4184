"""cdissect_labeler."""
