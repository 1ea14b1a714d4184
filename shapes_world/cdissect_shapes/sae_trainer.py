"""Sparse autoencoders on the shapes CNN's layer3, shipped for `cdissect demo` (`make shapes-sae`).

    python -m cdissect_shapes.sae_trainer            # writes both files into the shipped weights folder
    python -m cdissect_shapes.sae_trainer --out DIR  # somewhere else

Two SAEs in SAELens layout (`W_enc` [96, d_sae], `b_enc`, `W_dec`, `b_dec`; metadata
`activation`, `layer`, `model`), read per spatial position of layer3's [96, 8, 8] output:
- `shapes_sae.safetensors`: a ReLU SAE with an L1 penalty, trained on layer3 activations of
  fresh shapes-world images (deterministic: fixed seeds, one thread);
- `shapes_sae_planted.safetensors`: a planted SAE whose latent i is the CNN's own fc readout of
  unit i applied at each position, `W_enc = fc.weight.T`, `b_enc = fc.bias + offset`, `b_dec = 0`.
  The offset keeps every pre-activation positive on the world's images, so ReLU passes it
  unchanged and the average over positions equals fc unit i's logit (plus the offset): its
  truth is FC_WORDS[i] by construction.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .zoo import PLANTED_SAE_FILE, SAE_FILE, WEIGHTS_DIR, file_sha256

LAYER = "layer3"
THREADS = 1


@dataclass
class SaeTrainConfig:
    """Hyper-parameters of the shipped SAE (the defaults make it)."""

    latents: int = 256
    images: int = 4000
    steps: int = 3000
    batch_size: int = 2048
    lr: float = 1e-3
    l1: float = 3e-3
    seed: int = 0


def layer3_rows(model, n: int, seed: int, batch: int = 500):
    """Layer3 activations of n fresh images as rows [n * 64, 96] (one per position), float32."""
    import torch

    from .generator import render_batch
    from .target_model import images_to_tensor

    rng = np.random.default_rng(seed)
    parts = []
    with torch.no_grad():
        for start in range(0, n, batch):
            images, _ = render_batch(min(batch, n - start), rng)
            h = model.relu(model.bn1(model.conv1(images_to_tensor(images))))
            h = model.layer3(model.layer2(model.layer1(h)))
            parts.append(h.flatten(2).transpose(1, 2).reshape(-1, h.shape[1]))
    return torch.cat(parts)


def train_sae(rows, cfg: SaeTrainConfig, log=print) -> dict:
    """A ReLU SAE on rows [N, d]: SAELens-layout float32 tensors in the rows' own scale."""
    import torch

    torch.manual_seed(cfg.seed)
    scale = float((rows.pow(2).sum(1).mean() / rows.shape[1]).rsqrt())  # mean squared norm -> d
    x_all = rows * scale
    d, m = x_all.shape[1], cfg.latents
    w_dec = torch.nn.functional.normalize(torch.randn(m, d), dim=1)
    params = {"W_enc": w_dec.T.clone().requires_grad_(), "b_enc": torch.zeros(m, requires_grad=True),
              "W_dec": w_dec.requires_grad_(), "b_dec": x_all.mean(0).clone().requires_grad_()}
    opt = torch.optim.Adam(params.values(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    for step in range(cfg.steps):
        x = x_all[torch.randint(0, x_all.shape[0], (cfg.batch_size,), generator=gen)]
        f = torch.relu((x - params["b_dec"]) @ params["W_enc"] + params["b_enc"])
        recon = f @ params["W_dec"] + params["b_dec"]
        mse = (recon - x).pow(2).sum(1).mean() / d
        sparsity = (f * params["W_dec"].norm(dim=1)).sum(1).mean()
        loss = mse + cfg.l1 * sparsity
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 500 == 0:
            log(f"sae step {step + 1}/{cfg.steps} mse {mse.item():.4f} l0 {(f > 0).float().sum(1).mean().item():.1f}")
    with torch.no_grad():
        out = {k: v.detach().clone() for k, v in params.items()}
        # back to the unscaled activations: f(x) = relu((x*s - b_dec) W + b) = relu((x - b_dec/s) (sW) + b)
        return {"W_enc": out["W_enc"] * scale, "b_enc": out["b_enc"], "W_dec": out["W_dec"] / scale,
                "b_dec": out["b_dec"] / scale}


def planted_sae(model, rows) -> dict:
    """The fc readout per position as an SAE, offset so that no pre-activation is negative."""
    import torch

    with torch.no_grad():
        w = model.fc.weight.detach().T.contiguous()              # [96, 18]
        pre = rows @ w + model.fc.bias
        offset = float(max(0.0, -float(pre.min())) * 1.5 + 1.0)
        return {"W_enc": w, "b_enc": model.fc.bias.detach() + offset, "W_dec": torch.zeros(w.shape[1], w.shape[0]),
                "b_dec": torch.zeros(w.shape[0])}


def explained_variance(sae: dict, rows) -> tuple[float, float]:
    """(fraction of variance the SAE reconstructs, mean active latents per row) on rows."""
    import torch

    with torch.no_grad():
        f = torch.relu((rows - sae["b_dec"]) @ sae["W_enc"] + sae["b_enc"])
        recon = f @ sae["W_dec"] + sae["b_dec"]
        fve = 1 - float((recon - rows).pow(2).sum() / (rows - rows.mean(0)).pow(2).sum())
        return fve, float((f > 0).float().sum(1).mean())


def main(argv: list[str] | None = None) -> int:
    """Train the SAE, build the planted one, save both (safetensors) and print figures as JSON."""
    parser = argparse.ArgumentParser(prog="python -m cdissect_shapes.sae_trainer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="output folder (default: the shipped weights)")
    parser.add_argument("--cnn", type=Path, default=None, help="the shapes CNN weights (default: the shipped ones)")
    parser.add_argument("--quick", action="store_true", help="smoke run: a few steps on few images")
    args = parser.parse_args(argv)

    import torch
    from safetensors.torch import save_file

    from .zoo import load_target

    torch.set_num_threads(THREADS)
    cfg = SaeTrainConfig()
    if args.quick:
        cfg = SaeTrainConfig(images=200, steps=20, batch_size=256)
    model, _ = load_target(str(args.cnn) if args.cnn else None)
    train_rows = layer3_rows(model, cfg.images, seed=4242)
    held_out = layer3_rows(model, max(200, cfg.images // 10), seed=4343)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    sae = train_sae(train_rows, cfg, log)
    planted = planted_sae(model, torch.cat([train_rows, held_out]))
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"layer": LAYER, "model": "shapes_cnn"}
    save_file({k: v.contiguous() for k, v in sae.items()}, str(args.out / SAE_FILE),
              {**meta, "activation": "relu", "trained": json.dumps(cfg.__dict__)})
    save_file({k: v.contiguous() for k, v in planted.items()}, str(args.out / PLANTED_SAE_FILE),
              {**meta, "activation": "relu", "planted": "fc readout per position"})
    from .train_all import write_sums

    write_sums(args.out)
    fve, l0 = explained_variance(sae, held_out)
    figures = {"out": str(args.out), "latents": cfg.latents, "held_out_explained_variance": round(fve, 4),
               "held_out_mean_active_latents": round(l0, 2),
               "sha256": {name: file_sha256(args.out / name) for name in (SAE_FILE, PLANTED_SAE_FILE)}}
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
