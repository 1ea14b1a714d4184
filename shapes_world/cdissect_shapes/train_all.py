"""Retrain the shapes world's models from scratch and print their quality (`make shapes-models`).

    python -m cdissect_shapes.train_all            # the shipped weights (about an hour on 2 cores)
    python -m cdissect_shapes.train_all --quick    # smoke run, a few steps, into a temp folder

Deterministic: fixed seeds, one thread per trainer, as the shipped files were made
and a fixed step schedule. The CLIP run checkpoints its state every 200 steps and resumes from it,
so an interrupted run can be restarted with the same command. The demo never calls this.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from .zoo import CLIP_FILE, CNN_FILE, SUMS_FILE, WEIGHT_FILES, WEIGHTS_DIR, file_sha256

CLIP_THREADS = 1
CNN_THREADS = 1
GOAL = 0.95


def write_sums(out: Path) -> Path:
    """Write SHA256SUMS (sha256sum -c format) for the weight files in out (the SAEs when present)."""
    lines = [f"{file_sha256(out / name)}  {name}\n" for name in WEIGHT_FILES if (out / name).is_file()]
    path = out / SUMS_FILE
    path.write_text("".join(lines), encoding="utf-8")
    return path


def planted_aucs(model, n: int = 2000, seed: int = 777) -> dict[str, float]:
    """AUC of each planted unit for its own word on fresh images (1.0 = perfect detector)."""
    import torch

    from .generator import render_batch
    from .target_model import images_to_tensor
    from .truth import auc_matrix
    from .world import PLANTED_WORDS, WORD_TO_ATTRIBUTE

    images, attrs = render_batch(n, np.random.default_rng(seed))
    with torch.no_grad():
        act = model.planted(images_to_tensor(images)).numpy()
    ind = np.stack([[a[WORD_TO_ATTRIBUTE[w]] == w for a in attrs] for w in PLANTED_WORDS], 1)
    aucs = auc_matrix(act, ind)
    return {w: float(aucs[i, i]) for i, w in enumerate(PLANTED_WORDS)}


def main(argv: list[str] | None = None) -> int:
    """Train the CLIP, then the CNN; save both with SHA256SUMS; print the figures as JSON."""
    parser = argparse.ArgumentParser(prog="python -m cdissect_shapes.train_all", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: a few steps of each trainer")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output folder (default: the shipped {WEIGHTS_DIR}; with --quick a temp folder)")
    parser.add_argument("--skip-clip", action="store_true", help="keep the CLIP in --out, train only the CNN")
    args = parser.parse_args(argv)

    import clip
    import torch
    from safetensors.torch import save_file

    from .clip_trainer import CLIP_PHASES, save_openai_checkpoint, train_clip, zero_shot_accuracy
    from .cnn_trainer import CnnTrainConfig, head_accuracy, train_cnn

    out = args.out or (Path(tempfile.mkdtemp(prefix="shapes-quick-")) if args.quick else WEIGHTS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    clip_phases, cnn_cfg = list(CLIP_PHASES), CnnTrainConfig()
    n_eval = 2000
    if args.quick:
        clip_phases = [replace(c, steps=4, batch_size=32, log_every=2, warmup=2, eval_every=0) for c in clip_phases]
        cnn_cfg = replace(cnn_cfg, steps=8, batch_size=32, log_every=2, warmup=2, eval_every=0)
        n_eval = 200

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    figures: dict = {"out": str(out), "quick": args.quick}
    clip_path = out / CLIP_FILE
    if not args.skip_clip:
        torch.set_num_threads(CLIP_THREADS)
        weights, losses = None, []
        for phase, cfg in enumerate(clip_phases, 1):
            log(f"CLIP phase {phase}/{len(clip_phases)}: {cfg}")
            state = out / f".clip_train_state_{phase}.pt"
            model, phase_losses = train_clip(cfg, checkpoint=state, log=log, init_state=weights)
            weights = {k: v.clone() for k, v in model.state_dict().items()}
            losses += phase_losses
        save_openai_checkpoint(model, clip_path)
        for phase in range(1, len(clip_phases) + 1):
            (out / f".clip_train_state_{phase}.pt").unlink(missing_ok=True)
        figures["clip_loss_first_last"] = [losses[0], float(np.mean(losses[-20:]))]
    loaded, _ = clip.load(str(clip_path), device="cpu", jit=False)  # exactly as the embedder loads it
    figures["clip_zero_shot"] = zero_shot_accuracy(loaded, n=n_eval)

    torch.set_num_threads(CNN_THREADS)
    cnn, cnn_losses = train_cnn(cnn_cfg, log=log)
    save_file(cnn.state_dict(), str(out / CNN_FILE))
    figures["cnn_loss_first_last"] = [cnn_losses[0], float(np.mean(cnn_losses[-20:]))]
    figures["cnn_head_accuracy"] = head_accuracy(cnn, n=n_eval)
    figures["planted_auc"] = planted_aucs(cnn, n=n_eval)
    from .sae_trainer import main as train_saes  # the SAEs read this CNN's layer3: remake them

    train_saes(["--out", str(out), "--cnn", str(out / CNN_FILE)] + (["--quick"] if args.quick else []))
    write_sums(out)
    figures["sha256"] = {CLIP_FILE: file_sha256(clip_path), CNN_FILE: file_sha256(out / CNN_FILE)}

    core = [figures["clip_zero_shot"][k] for k in ("shape", "colour", "texture")]
    core += list(figures["cnn_head_accuracy"].values())
    figures["meets_goals"] = bool(min(core) >= GOAL)
    print(json.dumps(figures, indent=2))
    if not args.quick and not figures["meets_goals"]:
        log(f"WARNING: a zero-shot or head accuracy is below {GOAL}; see the figures above")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
