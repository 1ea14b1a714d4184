"""cdissect_activations."""
