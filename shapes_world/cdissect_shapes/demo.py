"""Settings of `cdissect demo`: label the shapes CNN with the shapes CLIP on a generated probe set.

No torch here: the CLI imports this module. The CLI writes the probe folder with
generator.write_probe_folder(dir, n_images, seed), runs the normal `cdissect run` path with
these settings, then scores the labels with scores.score_run(..., final_layer, planted_layer).
Then it labels the latents of two SAEs on `sae_layer` (zoo.sae_path(planted)), one run each with
`--features sae:PATH`, and scores them with scores.score_sae.
"""
from __future__ import annotations

from .concepts import concept_set_path

DEMO: dict = dict(
    model="shapes_cnn",
    weights="",  # empty: the shipped weights
    clip_model="shapes-clip",
    layers=["conv1", "layer1", "layer2", "layer3", "fc", "planted"],
    concept_set=str(concept_set_path()),
    n_images=3000,  # the full demo: a few minutes on 2 CPU cores
    n_images_ci=1200,  # the CI end-to-end test: still meets the final-layer and planted goals
    seed=2026,
    final_layer="fc",
    planted_layer="planted",
    sae_layer="layer3",  # the layer the shipped SAEs read (zoo.SAE_FILE, zoo.PLANTED_SAE_FILE)
)
