"""The shapes world's models, addressed by name through cdissect's entry points.

`cdissect.targets: shapes_cnn` -> load_target; `cdissect.clip_models: shapes-clip` ->
clip_checkpoint. torch is imported lazily so that finding the CLIP file needs no torch.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CLIP_FILE = "shapes-clip.pt"
CNN_FILE = "shapes_cnn.safetensors"
SAE_FILE = "shapes_sae.safetensors"  # an SAE on the CNN's layer3 (sae_trainer.py)
PLANTED_SAE_FILE = "shapes_sae_planted.safetensors"  # the fc readout per position, as an SAE
WEIGHT_FILES = (CLIP_FILE, CNN_FILE, SAE_FILE, PLANTED_SAE_FILE)
SUMS_FILE = "SHA256SUMS"
_RETRAIN_HINT = "run `make shapes-models` (python -m cdissect_shapes.train_all) to make it"


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shipped_sums(weights_dir: Path = WEIGHTS_DIR) -> dict[str, str]:
    """File name -> sha256 as recorded in the weights folder's SHA256SUMS."""
    path = weights_dir / SUMS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; {_RETRAIN_HINT}")
    sums: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.lstrip("*")] = digest
    return sums


def _shipped(name: str) -> Path:
    path = WEIGHTS_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"shipped shapes-world weight file {path} is missing; {_RETRAIN_HINT}")
    return path


def clip_checkpoint() -> str:
    """Path of the shipped tiny CLIP, an OpenAI-format checkpoint for `clip.load(path)`."""
    return str(_shipped(CLIP_FILE))


def sae_path(planted: bool = False) -> str:
    """Path of a shipped SAE on layer3 of the shapes CNN: the trained one, or the planted one."""
    return str(_shipped(PLANTED_SAE_FILE if planted else SAE_FILE))


def load_target(weights: str | None = None) -> tuple["torch.nn.Module", Callable]:
    """The shapes CNN in eval mode with its preprocess (PIL -> Tensor[3,64,64]).

    weights: None or "" for the shipped file, else a path to a safetensors state dict of the
    same architecture (e.g. one written by train_all --out).
    """
    from safetensors.torch import load_file

    from .target_model import ShapesCNN, ShapesPreprocess

    path = Path(weights) if weights else _shipped(CNN_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"shapes_cnn weights {path} not found; pass a .safetensors file "
                                f"written by cdissect_shapes.train_all, or leave weights empty for the shipped one")
    model = ShapesCNN()
    try:
        model.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path} does not hold a ShapesCNN state dict ({exc}); "
                         f"use a file written by cdissect_shapes.train_all") from exc
    return model.eval(), ShapesPreprocess()
