"""open_clip models: names `open_clip:ARCH[:PRETRAINED_OR_PATH]`.

- `open_clip:ViT-B-32:laion2b_s34b_b79k`: a published pretrained tag, fetched into our cache
  folder (fails fast with a clear message when offline);
- `open_clip:ViT-B-32:/path/weights.pt`: a local checkpoint (open_clip loads it with
  weights_only=True);
- `open_clip:ViT-B-32`: random weights from a fixed seed (tests, smoke runs).
Preprocessing is open_clip's evaluation transform for the model; precision as for OpenAI CLIP
(fp16 on CUDA, fp32 on CPU unless asked otherwise). Names are resolved and loaded by
`cdissect_common.clip_checkpoints`, shared with the activations service.
"""
from __future__ import annotations

import torch

from cdissect_common import clip_checkpoints

from .base import ClipBackend, describe_transform, resolve_device, resolve_precision

PREFIX = clip_checkpoints.OPEN_CLIP_PREFIX
RANDOM_SEED = clip_checkpoints.RANDOM_SEED


def list_names() -> list[str]:
    """Every published `ARCH:TAG` pair open_clip knows (the weights may still need downloading)."""
    return clip_checkpoints.open_clip_names()


class OpenClipBackend(ClipBackend):
    """A model made by open_clip.create_model_and_transforms."""

    def __init__(self, model, transform, tokenizer, model_id: str, checkpoint_sha256: str,
                 embed_dim: int, device: torch.device, torch_dtype: torch.dtype) -> None:
        super().__init__(device, torch_dtype)
        self.model = model
        self.transform = transform
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.checkpoint_sha256 = checkpoint_sha256
        self.embed_dim = embed_dim
        self.preprocess_id = "open_clip|" + describe_transform(transform)

    def _image_transform(self):
        return self.transform

    def _encode_image_batch(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)

    def _encode_text_batch(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device))


def load(spec: str, device: str | torch.device = "auto", precision: str | None = None) -> OpenClipBackend:
    """Load `ARCH[:PRETRAINED_OR_PATH]` (the part after 'open_clip:') onto `device`."""
    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    loaded = clip_checkpoints.load_open_clip(spec, dev, "fp16" if dtype == torch.float16 else "fp32")
    open_clip = clip_checkpoints.open_clip_module()
    embed_dim = int(open_clip.get_model_config(loaded.arch)["embed_dim"])
    tokenizer = open_clip.get_tokenizer(loaded.arch)
    return OpenClipBackend(loaded.model, loaded.transform, tokenizer, loaded.model_id, loaded.checkpoint_sha256,
                           embed_dim, dev, dtype)
