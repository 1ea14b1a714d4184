"""cdissect_shapes: the offline shapes world with known neuron truth.

generator (images + attributes, no torch), world (the vocabulary), captions + clip_trainer (the
tiny OpenAI-format CLIP), target_model + cnn_trainer (the target CNN and planted units), zoo
(entry points: shapes_cnn, shapes-clip), concepts (the concept set), truth + scores (label
quality against truth, no torch), demo (settings of `cdissect demo`), train_all (retraining).
"""
