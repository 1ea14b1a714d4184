"""OpenAI CLIP through `import clip`, as the reference uses it.

Accepted names: every `clip.available_models()` name (ViT-B/16 is the reference's default), a
local checkpoint file in OpenAI's format (TorchScript archive or plain state dict), or a plugin
name from the `cdissect.clip_models` entry-point group (the shapes world's `shapes-clip`), which
resolves to such a file. All three end in the same `clip.load(path, device, jit=False)`.

Precision follows the reference: clip.load builds fp16 weights on CUDA and casts to float32 on
CPU. fp32 on CUDA is an option (precision='fp32'). Names are resolved and loaded by
`cdissect_common.clip_checkpoints` (shared with the activations service, which dissects CLIP
image towers): named models are fetched into our cache folder by our own downloader, which
fails within seconds when offline and says where to put the file.
"""
from __future__ import annotations

import torch

from cdissect_common import clip_checkpoints
from cdissect_common.clip_checkpoints import (  # noqa: F401 (re-exported)
    ENTRY_POINT_GROUP, model_cache_path, model_url, resolve_checkpoint,
)

from .base import ClipBackend, describe_transform, resolve_device, resolve_precision

PREFIX = clip_checkpoints.OPENAI_PREFIX
CONTEXT_LENGTH = 77


def list_names() -> list[str]:
    """OpenAI's model names, then plugin names."""
    return clip_checkpoints.openai_names()


class OpenAIClip(ClipBackend):
    """A model loaded with clip.load; see the module docstring."""

    def __init__(self, model, transform, model_id: str, checkpoint_sha256: str,
                 device: torch.device, torch_dtype: torch.dtype) -> None:
        super().__init__(device, torch_dtype)
        self.model = model
        self.transform = transform
        self.model_id = model_id
        self.checkpoint_sha256 = checkpoint_sha256
        self.embed_dim = int(model.text_projection.shape[1])
        self.input_resolution = int(model.visual.input_resolution)
        self.preprocess_id = "openai-clip|" + describe_transform(transform)

    def _image_transform(self):
        return self.transform

    def _encode_image_batch(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)

    def _encode_text_batch(self, texts: list[str]) -> torch.Tensor:
        tokens = clip_checkpoints.openai_clip_module().tokenize(texts, context_length=CONTEXT_LENGTH,
                                                                truncate=True).to(self.device)
        return self.model.encode_text(tokens)


def load(name: str, device: str | torch.device = "auto", precision: str | None = None) -> OpenAIClip:
    """Load an OpenAI-format CLIP by name, path or plugin name onto `device`."""
    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    loaded = clip_checkpoints.load_openai_clip(name, dev)
    model = loaded.model
    if dtype == torch.float32:
        model = model.float()  # fp32 on CUDA by choice; on CPU clip.load already did this
    return OpenAIClip(model, loaded.transform, loaded.model_id, loaded.checkpoint_sha256, dev, dtype)
