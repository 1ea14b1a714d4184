"""CLIP-Dissect's released descriptions.csv files (imagenet_broden, 20k, ViT-B/16, soft_wpmi), verbatim."""
