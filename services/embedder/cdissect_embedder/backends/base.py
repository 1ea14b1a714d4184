"""What every embedding backend offers, and the parts they share (batching, templates, dtypes).

A backend turns images and texts into L2-normalised float32 vectors in one joint space. The
reference embeds raw concept strings (no template); templates are an option: each template is
filled with the concept, embedded and normalised, the results are averaged and normalised again.
"""
from __future__ import annotations

import types
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from PIL import Image

from cdissect_common.devices import resolve_device  # noqa: F401 (re-exported)
from cdissect_common.vocabulary import PRECISIONS

# Other spellings accepted for the precisions of cdissect_common.vocabulary.PRECISIONS.
PRECISION_ALIASES = {"fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
DEFAULT_TEXT_BATCH = 256
DEFAULT_IMAGE_BATCH = 64


class TextOnlyModelError(ValueError):
    """Image embedding was asked of a model that has no image tower."""




def resolve_precision(precision: str | None, device: torch.device) -> torch.dtype:
    """None -> the reference's choice (fp16 on CUDA, fp32 on CPU); else 'fp16' or 'fp32'.

    fp16 on CPU is refused: the reference never ran it and CPU half kernels are slow or missing.
    """
    if precision is None or precision == "":
        return torch.float16 if device.type == "cuda" else torch.float32
    name = PRECISION_ALIASES.get(str(precision).lower(), str(precision).lower())
    dtype = getattr(torch, name) if name in PRECISIONS else None
    if dtype is None:
        raise ValueError(f"unknown precision {precision!r}; use 'fp16' or 'fp32' (or leave it unset)")
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError("precision 'fp16' needs a CUDA device; use 'fp32' on CPU")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """torch.float16 -> 'float16' (the form recorded in artifacts)."""
    return str(dtype).removeprefix("torch.")


def describe_transform(transform: object) -> str:
    """A stable text for a preprocessing pipeline (no memory addresses), for cache keys."""
    inner = getattr(transform, "transforms", None)
    if isinstance(inner, (list, tuple)):
        return "|".join(describe_transform(t) for t in inner)
    if isinstance(transform, (types.FunctionType, types.BuiltinFunctionType)):
        return transform.__qualname__
    return " ".join(repr(transform).split())


def fill_templates(texts: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
    """For each template, the list of texts filled into its '{}' (validated)."""
    for template in templates:
        if not isinstance(template, str) or template.count("{}") != 1:
            raise ValueError(f"prompt template {template!r} must contain '{{}}' exactly once, e.g. 'a photo of {{}}.'")
    return [[template.replace("{}", text) for text in texts] for template in templates]


class ClipBackend(ABC):
    """An embedding model: `.encode_images` and `.encode_texts` give L2-normalised float32 on CPU.

    Attributes recorded with every output: model_id, checkpoint_sha256, dtype ('float16' |
    'float32', the compute dtype), device_type ('cpu' | 'cuda'), preprocess_id (describes the
    image preprocessing, for cache keys), embed_dim.
    """

    model_id: str
    checkpoint_sha256: str
    dtype: str
    device_type: str
    preprocess_id: str
    embed_dim: int
    supports_images: bool = True

    def __init__(self, device: torch.device, torch_dtype: torch.dtype,
                 text_batch_size: int = DEFAULT_TEXT_BATCH, image_batch_size: int = DEFAULT_IMAGE_BATCH) -> None:
        self.device = device
        self.torch_dtype = torch_dtype
        self.dtype = dtype_name(torch_dtype)
        self.device_type = device.type
        self.text_batch_size = text_batch_size
        self.image_batch_size = image_batch_size

    # --- what a backend implements ----------------------------------------------------------
    @abstractmethod
    def _encode_text_batch(self, texts: list[str]) -> torch.Tensor:
        """Raw (unnormalised) text features [len(texts), d], any float dtype."""

    def _encode_image_batch(self, images: torch.Tensor) -> torch.Tensor:
        """Raw image features [B, d] for images already on the device in the model's dtype."""
        raise TextOnlyModelError(self._text_only_message())

    def _image_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        raise TextOnlyModelError(self._text_only_message())

    # --- shared behaviour --------------------------------------------------------------------
    def _text_only_message(self) -> str:
        return (f"{self.model_id} is a text-only model and cannot embed images; use a CLIP model "
                f"such as ViT-B/16 for image embeddings")

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> Tensor[3, H, W], the model's own preprocessing."""
        if not isinstance(image, Image.Image):
            raise TypeError(f"preprocess expects a PIL.Image, got {type(image).__name__}")
        return self._image_transform()(image)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images [B, 3, H, W] -> L2-normalised float32 embeddings [B, d] on CPU."""
        if not self.supports_images:
            raise TextOnlyModelError(self._text_only_message())
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"encode_images expects preprocessed images [B, 3, H, W]; got {shape}")
        parts = []
        for start in range(0, images.shape[0], self.image_batch_size):
            batch = images[start:start + self.image_batch_size].to(self.device, self.torch_dtype, non_blocking=True)
            parts.append(_l2(self._encode_image_batch(batch).float()).cpu())
        return torch.cat(parts) if parts else torch.zeros(0, self.embed_dim)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
        """Texts -> L2-normalised float32 embeddings [C, d] on CPU.

        templates None (the reference): each string as is. Otherwise every template is filled,
        embedded and normalised; the per-template vectors are averaged and normalised again.
        """
        if isinstance(texts, str):
            raise TypeError("encode_texts expects a list of strings, got a single string; wrap it in a list")
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("encode_texts expects a list of strings")
        if not templates:
            return self._encode_text_list(texts)
        total = None
        for filled in fill_templates(texts, list(templates)):
            emb = self._encode_text_list(filled)
            total = emb if total is None else total + emb
        return _l2(total)

    def _encode_text_list(self, texts: list[str]) -> torch.Tensor:
        parts = [_l2(self._encode_text_batch(texts[s:s + self.text_batch_size]).float()).cpu()
                 for s in range(0, len(texts), self.text_batch_size)]
        return torch.cat(parts) if parts else torch.zeros(0, self.embed_dim)

    def describe(self) -> dict[str, str]:
        """The identity recorded with every output artifact."""
        return {"model_id": self.model_id, "checkpoint_sha256": self.checkpoint_sha256, "dtype": self.dtype,
                "device_type": self.device_type, "preprocess_id": self.preprocess_id}


def _l2(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
