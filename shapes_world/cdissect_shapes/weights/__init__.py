"""Shipped weights of the shapes world (a data folder; a package so installers ship its files).

shapes-clip.pt: the tiny CLIP in OpenAI's TorchScript checkpoint format (fp16 weights);
shapes_cnn.safetensors: the target CNN; SHA256SUMS: their digests (`sha256sum -c` format).
Made by `python -m cdissect_shapes.train_all`.
"""
