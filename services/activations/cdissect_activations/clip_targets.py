"""CLIP image towers as targets: `clip:ViT-B/16`, `clip:shapes-clip`, `clip:/p/clip.pt`,
`clip:open_clip:ViT-B-32:laion2b_s34b_b79k`.

Any CLIP the embedder knows, loaded by the same code (`cdissect_common.clip_checkpoints`); the
target is its `visual` module in float32 with CLIP's own preprocessing, so layers are named as
in the tower: `transformer.resblocks[11]`, `ln_post`, `layer4` (ResNet towers), ... OpenAI's
transformer runs sequence-first ([T, B, D]); its modules are marked so pooling sees [B, T, D].

Architecture only (`cdissect layers`, no weights needed): OpenAI names build their tower from
the published hyper-parameters below; open_clip architectures build with random weights; files
and plugins are local and load as they are.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cdissect_common import clip_checkpoints

from .pooling import TokenLayout

PREFIX = "clip"
# Image towers of OpenAI's released models: (embed_dim, image_resolution, vision_layers,
# vision_width, vision_patch_size), as clip.model.build_model reads them off the weights.
OPENAI_TOWERS = {
    "RN50": (1024, 224, (3, 4, 6, 3), 64, None),
    "RN101": (512, 224, (3, 4, 23, 3), 64, None),
    "RN50x4": (640, 288, (4, 6, 10, 6), 80, None),
    "RN50x16": (768, 384, (6, 8, 18, 8), 96, None),
    "RN50x64": (1024, 448, (3, 15, 36, 10), 128, None),
    "ViT-B/32": (512, 224, 12, 768, 32),
    "ViT-B/16": (512, 224, 12, 768, 16),
    "ViT-L/14": (768, 224, 24, 1024, 14),
    "ViT-L/14@336px": (768, 336, 24, 1024, 14),
}
OPEN_CLIP_SUBSET = ("open_clip:ViT-B-32:laion2b_s34b_b79k", "open_clip:ViT-B-16:openai")


def list_names(every: bool = False) -> list[str]:
    """`clip:NAME` for OpenAI's names and plugins, plus open_clip (a few, or every=True all)."""
    open_clip = [f"open_clip:{n}" for n in clip_checkpoints.open_clip_names()] if every else list(OPEN_CLIP_SUBSET)
    return [f"{PREFIX}:{n}" for n in clip_checkpoints.openai_names() + open_clip]


def _openai_tower(name: str) -> tuple[nn.Module, object]:
    """A random-weight OpenAI image tower of a released model, with CLIP's preprocessing."""
    from clip.clip import _transform
    from clip.model import ModifiedResNet, VisionTransformer

    embed_dim, resolution, layers, width, patch = OPENAI_TOWERS[name]
    if isinstance(layers, tuple):
        tower = ModifiedResNet(layers=layers, output_dim=embed_dim, heads=width * 32 // 64,
                               input_resolution=resolution, width=width)
    else:
        tower = VisionTransformer(input_resolution=resolution, patch_size=patch, width=width, layers=layers,
                                  heads=width // 64, output_dim=embed_dim)
    return tower, _transform(resolution)


def _tower_layout(visual: nn.Module) -> tuple[TokenLayout, frozenset[int]]:
    """(token layout, ids of sequence-first modules) of a CLIP image tower."""
    transformer = getattr(visual, "transformer", None)
    conv = getattr(visual, "conv1", None)
    if transformer is None or not isinstance(conv, nn.Conv2d):
        return TokenLayout(), frozenset()
    size = getattr(visual, "input_resolution", None) or getattr(visual, "image_size", None)
    size = size[0] if isinstance(size, (tuple, list)) else size
    patch = conv.kernel_size[0]
    tokens = (int(size) // patch) ** 2 + 1 if size else None
    seq_first = frozenset() if getattr(transformer, "batch_first", False) else \
        frozenset(id(m) for m in transformer.modules())
    return TokenLayout(cls=True, registers=0, tokens=tokens), seq_first


def load(name: str, path: str, device: torch.device, architecture_only: bool = False):
    """A Target for the image tower of CLIP `name` (or of the local checkpoint `path`)."""
    from .zoo import RANDOM_SEED, RGBThen, _finish, _random_model

    if name.startswith("open_clip:"):
        spec = name[len("open_clip:"):]
        if path:
            spec = f"{spec.split(':')[0]}:{path}"
        elif architecture_only:
            spec = spec.split(":")[0]
        loaded = clip_checkpoints.load_open_clip(spec, torch.device("cpu"), "fp32")
        visual, transform, model_id, sha = loaded.model.visual, loaded.transform, loaded.model_id, loaded.checkpoint_sha256
    elif architecture_only and not path and name in OPENAI_TOWERS:
        visual, transform = _random_model(lambda: _openai_tower(name))
        model_id, sha = f"openai-clip:{name}:architecture", f"random-init:{RANDOM_SEED}"
    else:
        loaded = clip_checkpoints.load_openai_clip(str(Path(path).expanduser()) if path else name, torch.device("cpu"))
        visual, transform, model_id, sha = loaded.model.visual, loaded.transform, loaded.model_id, loaded.checkpoint_sha256
    visual = visual.float()
    target = _finish(f"{PREFIX}:{name or Path(path).name}", visual, RGBThen(transform), f"{PREFIX}-visual:{model_id}",
                     sha, model_id, device)
    target.layout, target.seq_first = _tower_layout(visual)
    return target
