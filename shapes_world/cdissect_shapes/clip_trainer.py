"""Train the tiny CLIP of the shapes world and save it in OpenAI's checkpoint format.

Why these choices (issue 4): OpenAI's own `clip.model.CLIP` class with a ResNet vision tower
(a tiny ViT did not learn shape), a multi-positive contrastive loss (a caption such as "red" is
positive for every red image in the batch) plus a single-word zero-shot loss per attribute
(see word_loss: without it shape stayed at 25% after 900 steps), and the logit scale frozen at real CLIP's 100 because
CLIP-Dissect's softmax temperature a=10 assumes it. The file is a TorchScript archive with fp16
weights, like OpenAI's, so `clip.load(path)` loads it through the real code path.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .captions import Constraints, bare_word_captions, positives, sample_caption
from .generator import render_batch
from .world import ATTRIBUTES

# (embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
#  context_length, vocab_size, transformer_width, transformer_heads, transformer_layers)
TINY_CLIP_CONFIG: tuple = (64, 64, (1, 1, 1, 1), 16, None, 77, 49408, 64, 1, 2)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LOGIT_SCALE = 100.0


@dataclass
class ClipTrainConfig:
    """Hyper-parameters of one CLIP training run (the defaults make the shipped model)."""

    steps: int = 2400
    batch_size: int = 96
    word_loss_weight: float = 2.0
    lr: float = 5e-4  # the ResNet tower learns shape at 5e-4 and barely at 2e-3 (measured)
    warmup: int = 100
    weight_decay: float = 0.05
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 100
    eval_every: int = 300  # log single-word zero-shot accuracy on 300 held-out images (0: never)
    # Round init_state's parameters to fp16 first, as the shipped file holds them: a phase
    # trained from the shipped checkpoint is then reproduced exactly from the previous phase.
    init_fp16: bool = False


def build_tiny_clip(seed: int = 0) -> torch.nn.Module:
    """A freshly initialised tiny CLIP with its logit scale fixed at 100 (not trained)."""
    from clip.model import CLIP

    torch.manual_seed(seed)
    model = CLIP(*TINY_CLIP_CONFIG)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(LOGIT_SCALE))
    model.logit_scale.requires_grad_(False)
    return model


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N,64,64,3] -> float [N,3,64,64] normalised exactly as CLIP's preprocess does."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class Tokens:
    """clip.tokenize with a cache: the caption vocabulary is small and repeats constantly."""

    def __init__(self) -> None:
        import clip

        self._tokenize = clip.tokenize
        self._cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        missing = [t for t in texts if t not in self._cache]
        if missing:
            for t, row in zip(missing, self._tokenize(missing)):
                self._cache[t] = row
        return torch.stack([self._cache[t] for t in texts])


def multi_positive_loss(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy against uniform targets over all positives.

    logits [B, M] image-to-caption, pos [B, M] bool. Every image has a positive by construction
    (its own caption); captions that fit no image in the batch are dropped. Uniform targets ask an image to be equally close to every true
    caption, which is what CLIP-Dissect's per-image softmax over concepts relies on.
    """
    has_image = pos.any(0)
    if not bool(has_image.all()):  # a bare word no image of a small batch shows: no text-side term
        logits, pos = logits[:, has_image], pos[:, has_image]
    posf = pos.float()
    t_img = posf / posf.sum(1, keepdim=True)
    t_txt = posf / posf.sum(0, keepdim=True)
    loss_i = -(t_img * F.log_softmax(logits, 1)).sum(1).mean()
    loss_t = -(t_txt * F.log_softmax(logits, 0)).sum(0).mean()
    return 0.5 * (loss_i + loss_t)


def word_loss(logits_by_key: dict[str, torch.Tensor], attrs: list[dict[str, str]]) -> torch.Tensor:
    """Mean over attributes of the cross-entropy of picking the image's own bare word.

    logits_by_key[k] [B, values of k]: scaled similarity of each image to every bare word of
    attribute k. This is zero-shot classification with single-word prompts, the use
    CLIP-Dissect makes of the model; without it, shape (the hard attribute) is learnt far
    more slowly than colour, because in the multi-positive loss it is one of ~10 positives.
    """
    losses = []
    for key, logits in logits_by_key.items():
        index = {v: i for i, v in enumerate(ATTRIBUTES[key])}
        target = torch.tensor([index[a[key]] for a in attrs], dtype=torch.long)
        losses.append(F.cross_entropy(logits, target))
    return torch.stack(losses).mean()


def _batch(rng: np.random.Generator, n: int, extra: list[tuple[Constraints, str]]
           ) -> tuple[torch.Tensor, list[str], torch.Tensor, list[dict[str, str]]]:
    """Images, unique caption texts, the positive matrix and the attributes for one step."""
    images, attrs = render_batch(n, rng)
    caps: dict[str, Constraints] = {}
    for a in attrs:
        cons, text = sample_caption(a, rng)
        caps.setdefault(text, cons)
    for cons, text in extra:
        caps.setdefault(text, cons)
    texts = list(caps)
    pos = positives(attrs, [caps[t] for t in texts])
    return images_to_tensor(images), texts, torch.from_numpy(pos), attrs


def _lr_at(step: int, cfg: ClipTrainConfig) -> float:
    """Linear warm-up then cosine decay to 2% of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))


# The shipped CLIP: phase 1 from scratch, then phase 2 continues from its weights with a fresh
# optimizer, a new warm-up and its own data stream (shape, the hard attribute, only starts to
# click late in phase 1: 27% -> 45% zero-shot between steps 300 and 1200). Phase 3 was trained
# from the fp16 checkpoint of phases 1-2 (zero-shot shape 0.964, still rising) at half phase 2's
# lr: shape 0.986 and selective conv top-3 0.66 -> 0.70 in the 3000-image demo.
CLIP_PHASES: tuple[ClipTrainConfig, ...] = (
    ClipTrainConfig(),
    ClipTrainConfig(steps=2400, lr=4e-4, warmup=50, seed=1),
    ClipTrainConfig(steps=2400, lr=2e-4, warmup=50, seed=2, init_fp16=True),
)


def train_clip(cfg: ClipTrainConfig, checkpoint: Path | None = None,
               log: Callable[[str], None] = print,
               init_state: dict[str, torch.Tensor] | None = None) -> tuple[torch.nn.Module, list[float]]:
    """Train the tiny CLIP; returns (model in eval mode, per-step losses).

    init_state: weights to start from (a previous phase) instead of a fresh initialisation.
    With `checkpoint`, state is saved every cfg.checkpoint_every steps and training resumes
    from it if it exists (same seed -> same result as an uninterrupted run).
    """
    model = build_tiny_clip(cfg.seed)
    if init_state is not None:
        if cfg.init_fp16:
            params = {n for n, _ in model.named_parameters()}  # buffers (BN statistics) stay fp32
            init_state = {k: v.half().float() if k in params else v for k, v in init_state.items()}
        model.load_state_dict(init_state)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    rng = np.random.default_rng(cfg.seed + 1000)
    start, losses = 0, []
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        rng.bit_generator.state = state["rng"]
        start, losses = state["step"], state["losses"]
        log(f"resumed CLIP training at step {start}")
    tokens = Tokens()
    extra = bare_word_captions()
    model.train()
    t0 = time.time()
    for step in range(start, cfg.steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        x, texts, pos, attrs = _batch(rng, cfg.batch_size, extra)
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(model.encode_text(tokens(texts)), dim=-1)
        logits = LOGIT_SCALE * img @ txt.t()
        where = {t: j for j, t in enumerate(texts)}  # every bare word is among the texts
        by_key = {k: logits[:, [where[w] for w in vals]] for k, vals in ATTRIBUTES.items()}
        loss = multi_positive_loss(logits, pos) + cfg.word_loss_weight * word_loss(by_key, attrs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss))
        if (step + 1) % cfg.log_every == 0 or step == start:
            recent = float(np.mean(losses[-cfg.log_every:]))
            log(f"clip step {step + 1}/{cfg.steps} loss {recent:.4f} "
                f"lr {_lr_at(step, cfg):.2e} {time.time() - t0:.0f}s")
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            acc = zero_shot_accuracy(model, n=300)
            log(f"clip step {step + 1} zero-shot " + " ".join(f"{k} {v:.2f}" for k, v in acc.items()))
            model.train()
        if checkpoint is not None and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
            tmp = checkpoint.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": rng.bit_generator.state,
                        "step": step + 1, "losses": losses}, tmp)
            tmp.replace(checkpoint)
    model.eval()
    return model, losses


def save_openai_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    """Save as OpenAI ships CLIP: a traced TorchScript archive whose weights are fp16."""
    import clip
    from clip.model import CLIP

    src = CLIP(*TINY_CLIP_CONFIG).eval()
    src.load_state_dict(model.state_dict())
    res = TINY_CLIP_CONFIG[1]
    with torch.no_grad():
        traced = torch.jit.trace(src, (torch.zeros(1, 3, res, res), clip.tokenize(["a shape"])), check_trace=False)
        for p in traced.parameters():
            p.data = p.data.half()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    torch.jit.save(traced, str(tmp))
    tmp.replace(path)
    return path


@torch.no_grad()
def zero_shot_accuracy(model: torch.nn.Module, n: int = 2000, seed: int = 12345,
                       batch: int = 250) -> dict[str, float]:
    """Single-word zero-shot accuracy per attribute: argmax over that attribute's bare words."""
    import clip

    model.eval()
    rng = np.random.default_rng(seed)
    text_feats = {k: F.normalize(model.encode_text(clip.tokenize(list(v))).float(), dim=-1)
                  for k, v in ATTRIBUTES.items()}
    correct = {k: 0 for k in ATTRIBUTES}
    done = 0
    while done < n:
        m = min(batch, n - done)
        images, attrs = render_batch(m, rng)
        feats = F.normalize(model.encode_image(images_to_tensor(images)).float(), dim=-1)
        for k, vals in ATTRIBUTES.items():
            pred = (feats @ text_feats[k].t()).argmax(1).tolist()
            correct[k] += sum(vals[p] == a[k] for p, a in zip(pred, attrs))
        done += m
    return {k: correct[k] / n for k in ATTRIBUTES}
