"""Benchmark: sparse-autoencoder latents as units, at a size researchers use (`make bench-sae`).

A layer of 32768 SAE latents on 20000 images, through the activations service's own code path:
per shard of 1000 images, batches of 64 (CDISSECT_BATCH_SIZE's default) go through
`Target.recorder(..., features={layer: sae})`, which encodes each batch's positions in chunks
and pools them at once (`sae.encode_pooled`); the shard's [1000, 32768] float32 result is what
the service stores as one artifact. The target is the shipped shapes CNN and its layer3
([96, 8, 8]: 64 positions per image), the SAE a random ReLU SAE 96 -> 32768 (the speed and
memory do not depend on the weights). Images are shapes-world renders (generation excluded from
the time).

Each mode runs in a fresh subprocess so its peak resident memory (ru_maxrss) is its own:
- `sae`: the service path above;
- `plain`: the same images and layer without the SAE (96 units): the cost of the model alone;
- `dense-batch`: the SAE applied as the naive way would, one batch at a time: all
  [batch x positions, 32768] latents materialised, then pooled (holding [N, positions, latents]
  for all images is not an option at all: 20000 x 64 x 32768 float32 is 168 GB). Its peak is
  per batch, so it runs on `--dense-images` (default 2000) to save time.

Prints times, peak memories and the per-shard artifact size. `--quick` runs 2000 images.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

SHARD = 1000
BATCH = 64
LAYER = "layer3"


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _child(mode: str, n: int, latents: int, seed: int) -> dict:
    import torch

    from cdissect_activations.sae import SparseAutoencoder, encode
    from cdissect_activations.zoo import load_target
    from cdissect_shapes.generator import render_batch
    from cdissect_shapes.target_model import images_to_tensor

    torch.manual_seed(seed)
    target = load_target("shapes_cnn")
    sae = SparseAutoencoder(W_enc=torch.randn(96, latents) / 96 ** 0.5, b_enc=torch.full((latents,), -0.5),
                            b_dec=torch.zeros(96))
    rng = np.random.default_rng(seed)
    baseline = _peak_mb()
    features = {LAYER: sae} if mode == "sae" else None
    recorder = target.recorder([LAYER], "avg", "cls", features)
    dense_hook: dict = {}
    if mode == "dense-batch":
        def hook(_m, _i, out):
            rows = out.flatten(2).transpose(1, 2)  # [B, 64, 96]
            dense_hook["out"] = encode(sae, rows.reshape(-1, 96)).reshape(rows.shape[0], rows.shape[1], -1).mean(1)
        handle = target.model.layer3.register_forward_hook(hook)
    elapsed, units, shard_bytes = 0.0, 0, 0
    for start in range(0, n, SHARD):
        images, _ = render_batch(min(SHARD, n - start), rng)
        x_all = images_to_tensor(images)
        t0 = time.perf_counter()
        parts = []
        with torch.no_grad():
            for b in range(0, len(x_all), BATCH):
                if mode == "dense-batch":
                    target.model(x_all[b:b + BATCH])
                    parts.append(dense_hook.pop("out").numpy())
                else:
                    parts.append(recorder.record(x_all[b:b + BATCH])[LAYER].cpu().numpy())
        shard = np.concatenate(parts).astype(np.float32)  # what the service stores per shard
        elapsed += time.perf_counter() - t0
        units, shard_bytes = shard.shape[1], shard.nbytes
        del parts, shard
    if mode == "dense-batch":
        handle.remove()
    return {"mode": mode, "images": n, "units": units, "seconds": round(elapsed, 1),
            "images_per_s": round(n / elapsed, 1), "peak_mb": round(_peak_mb(), 0),
            "peak_before_work_mb": round(baseline, 0), "shard_artifact_mb": round(shard_bytes / 2 ** 20, 1),
            "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--latents", type=int, default=32768)
    parser.add_argument("--quick", action="store_true", help="2000 images")
    parser.add_argument("--modes", default="plain,sae,dense-batch")
    parser.add_argument("--dense-images", type=int, default=2000, help="images of the dense-batch mode")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    n = 2000 if args.quick else args.images
    if args.child:
        print(json.dumps(_child(args.child, n, args.latents, 0)))
        return 0
    rows = []
    for mode in args.modes.split(","):
        images = min(n, args.dense_images) if mode == "dense-batch" else n
        proc = subprocess.run([sys.executable, __file__, "--child", mode, "--images", str(images), "--latents",
                               str(args.latents)], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{mode} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'mode':<12} {'units':>6} {'images':>7} {'seconds':>8} {'img/s':>7} {'peak MiB':>9} {'(before work)':>14}")
    for r in rows:
        print(f"{r['mode']:<12} {r['units']:>6} {r['images']:>7} {r['seconds']:>8} {r['images_per_s']:>7} "
              f"{r['peak_mb']:>9.0f} {r['peak_before_work_mb']:>14.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
