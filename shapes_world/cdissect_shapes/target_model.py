"""The shapes world's target network: a small CNN with attribute heads and planted units.

Layers (hook names): conv1 (raw stem conv, before BN, like ResNet's), layer1, layer2, layer3
(conv stages, [B,C,H,W]), fc (18 logits: 6 shapes, 8 colours, 4 textures; unit i's truth is
FC_WORDS[i]) and planted ([B, 9]: hand-built units whose concept is known by construction).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .generator import IMAGE_SIZE
from .world import COLOURS, FC_WORDS, PLANTED_WORDS, SHAPES

CNN_MEAN = (0.5, 0.5, 0.5)
CNN_STD = (0.25, 0.25, 0.25)
HEADS: dict[str, slice] = {
    "shape": slice(0, len(SHAPES)),
    "colour": slice(len(SHAPES), len(SHAPES) + len(COLOURS)),
    "texture": slice(len(SHAPES) + len(COLOURS), len(FC_WORDS)),
}
COLOUR_RADIUS = 45.0  # RGB distance (0-255 scale) within which a pixel counts as a colour
STRIPE_WINDOW = 6  # pooling window of the stripe detector (the stripe period)
STRIPE_FLOOR = 8.0  # edge-energy difference ignored as background noise


class PlantedUnits(nn.Module):
    """Units with known concepts: the pixel fraction of each shape colour, and a stripe detector.

    Input: the CNN's normalised image batch. The stripe unit measures, in windows one stripe
    period wide, how much more edge energy runs along one axis than the other: stripes put all
    their edges on one axis, while solid, dotted and checkered fills and noise balance both.
    No parameters are learned; the buffers fix the colours and the normalisation.
    """

    words: tuple[str, ...] = PLANTED_WORDS  # the concept of each output unit, in order

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("colours", torch.tensor(list(COLOURS.values()), dtype=torch.float32))
        self.register_buffer("mean", torch.tensor(CNN_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(CNN_STD).view(1, 3, 1, 1) * 255.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = x * self.std + self.mean  # [B,3,H,W] on the 0-255 scale
        dist = torch.cdist(rgb.flatten(2).transpose(1, 2), self.colours.unsqueeze(0).expand(x.shape[0], -1, -1))
        colour_frac = (dist < COLOUR_RADIUS).float().mean(1)  # [B, 8]
        dy = (rgb[:, :, 1:, :-1] - rgb[:, :, :-1, :-1]).abs().sum(1, keepdim=True)
        dx = (rgb[:, :, :-1, 1:] - rgb[:, :, :-1, :-1]).abs().sum(1, keepdim=True)
        ey = F.avg_pool2d(dy, STRIPE_WINDOW, stride=2)
        ex = F.avg_pool2d(dx, STRIPE_WINDOW, stride=2)
        stripe = F.relu((ey - ex).abs() - STRIPE_FLOOR).mean((1, 2, 3))
        return torch.cat([colour_frac, stripe.unsqueeze(1)], 1)


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=False)]


class ShapesCNN(nn.Module):
    """Small CNN classifying shape, colour and texture in one 18-unit fc layer."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 2, 1, bias=False)  # stride 2: 64 -> 32 px
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=False)
        self.layer1 = nn.Sequential(*_conv_bn(width, width))
        self.layer2 = nn.Sequential(*_conv_bn(width, 2 * width, 2), *_conv_bn(2 * width, 2 * width))
        self.layer3 = nn.Sequential(*_conv_bn(2 * width, 4 * width, 2), *_conv_bn(4 * width, 4 * width))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, len(FC_WORDS))
        self.planted = PlantedUnits()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, 18]; the planted units run on the same input so hooks see them."""
        self.planted(x)
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.layer3(self.layer2(self.layer1(h)))
        return self.fc(torch.flatten(self.avgpool(h), 1))


def head_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of the three heads' cross-entropies; targets [B,3] = (shape, colour, texture) indices."""
    return sum(F.cross_entropy(logits[:, s], targets[:, i]) for i, s in enumerate(HEADS.values()))


def head_predictions(logits: torch.Tensor) -> torch.Tensor:
    """[B,3] predicted (shape, colour, texture) indices."""
    return torch.stack([logits[:, s].argmax(1) for s in HEADS.values()], 1)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N,H,W,3] -> normalised float [N,3,H,W], as the CNN's preprocess does."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - torch.tensor(CNN_MEAN).view(1, 3, 1, 1)) / torch.tensor(CNN_STD).view(1, 3, 1, 1)


class ShapesPreprocess:
    """PIL image -> Tensor[3,64,64] with the CNN's normalisation (resizes other sizes, bilinear)."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        if image.size != (IMAGE_SIZE, IMAGE_SIZE):
            image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
        return images_to_tensor(np.asarray(image)[None])[0]

    def __repr__(self) -> str:
        return f"ShapesPreprocess(size={IMAGE_SIZE}, mean={CNN_MEAN}, std={CNN_STD})"
