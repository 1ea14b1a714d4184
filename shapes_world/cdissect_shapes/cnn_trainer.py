"""Train the shapes world's target CNN until every head (shape, colour, texture) is >= 95% accurate.

Fresh images every step from the generator (the world is infinite, so no epochs and no
overfitting); a fixed seed and a fixed step schedule make the result reproducible.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .generator import render_batch
from .target_model import HEADS, ShapesCNN, head_loss, head_predictions, images_to_tensor
from .world import ATTRIBUTES

_HEAD_VALUES = {k: {v: i for i, v in enumerate(ATTRIBUTES[k])} for k in HEADS}


@dataclass
class CnnTrainConfig:
    """Hyper-parameters of one CNN training run (the defaults make the shipped model)."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 5e-4
    seed: int = 0
    log_every: int = 100
    eval_every: int = 500  # log held-out head accuracy every this many steps (0: never)


def attribute_targets(attrs: list[dict[str, str]]) -> torch.Tensor:
    """[N,3] int64 class indices of (shape, colour, texture)."""
    return torch.tensor([[_HEAD_VALUES[k][a[k]] for k in HEADS] for a in attrs], dtype=torch.long)


def _lr_at(step: int, cfg: CnnTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * frac)))


def train_cnn(cfg: CnnTrainConfig, log: Callable[[str], None] = print) -> tuple[ShapesCNN, list[float]]:
    """Train a ShapesCNN from scratch; returns (model in eval mode, per-step losses)."""
    torch.manual_seed(cfg.seed)
    model = ShapesCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed + 2000)
    losses: list[float] = []
    model.train()
    t0 = time.time()
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        images, attrs = render_batch(cfg.batch_size, rng)
        loss = head_loss(model(images_to_tensor(images)), attribute_targets(attrs))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss))
        if (step + 1) % cfg.log_every == 0:
            log(f"cnn step {step + 1}/{cfg.steps} loss {np.mean(losses[-cfg.log_every:]):.4f} {time.time() - t0:.0f}s")
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            log(f"cnn step {step + 1} held-out accuracy {head_accuracy(model, n=500)}")
            model.train()
    model.eval()
    return model, losses


@torch.no_grad()
def head_accuracy(model: ShapesCNN, n: int = 2000, seed: int = 54321, batch: int = 250) -> dict[str, float]:
    """Accuracy of each head on n fresh images (a seed the trainer never uses)."""
    model.eval()
    rng = np.random.default_rng(seed)
    correct = torch.zeros(len(HEADS))
    done = 0
    while done < n:
        m = min(batch, n - done)
        images, attrs = render_batch(m, rng)
        pred = head_predictions(model(images_to_tensor(images)))
        correct += (pred == attribute_targets(attrs)).float().sum(0)
        done += m
    return {k: float(correct[i]) / n for i, k in enumerate(HEADS)}
