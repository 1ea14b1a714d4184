"""Sparse-autoencoder (SAE) latents as units: load an SAE file, check it, encode and pool per batch.

An SAE trained on one layer's activations maps each spatial position (conv maps) or token
(ViTs) x ∈ R^d_in to latents f ∈ R^d_sae:

    pre = (x - b_dec) @ W_enc + b_enc
    f   = ReLU(pre)                          activation "relu" (the default)
        | TopK_k(pre), others 0, then ReLU   activation "topk"
        | ReLU(pre) * (pre > threshold)      activation "jumprelu" (per-latent threshold)

Files (safetensors) in the common layouts are read:
- SAELens / saev: `W_enc` [d_in, d_sae], `b_enc` [d_sae], `b_dec` [d_in], optional `W_dec`
  [d_sae, d_in] (unused) and `threshold` [d_sae] (JumpReLU);
- OpenAI's TopK SAEs: `encoder.weight` [d_sae, d_in], `encoder.bias` or `latent_bias` [d_sae],
  `pre_bias` [d_in].
The activation comes from the caller, else the file's metadata (`activation` or SAELens'
`activation_fn_str`, and `k`), else a `threshold` tensor means JumpReLU, else ReLU.

`encode_pooled` never holds [images, positions, latents]: it encodes at most `max_elements`
latent values at a time and folds each chunk into the per-image mean or max at once, so 16k-65k
latents fit in memory for any batch size. Pure torch: nothing here knows about gRPC or the store.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from cdissect_common.vocabulary import SAE_ACTIVATIONS

__all__ = ["SparseAutoencoder", "SaeError", "load_sae", "encode", "encode_pooled", "ACTIVATIONS",
           "DEFAULT_MAX_ELEMENTS"]

ACTIVATIONS = SAE_ACTIVATIONS
DEFAULT_MAX_ELEMENTS = 1 << 24  # latent values encoded at once: 64 MiB of float32
_EXPECTED = ("expected SAELens-style keys W_enc [d_in, d_sae], b_enc [d_sae], b_dec [d_in] (optional "
             "W_dec [d_sae, d_in], threshold [d_sae] for JumpReLU), or OpenAI-style encoder.weight "
             "[d_sae, d_in], encoder.bias or latent_bias [d_sae], pre_bias [d_in]")


class SaeError(ValueError):
    """An SAE file that cannot be used: unreadable, wrong keys or shapes, or a bad activation."""


@dataclass(frozen=True)
class SparseAutoencoder:
    """The encoder half of an SAE (float32): what turns activations into latents."""

    W_enc: torch.Tensor            # [d_in, d_sae]
    b_enc: torch.Tensor            # [d_sae]
    b_dec: torch.Tensor            # [d_in], subtracted from the input
    activation: str = "relu"
    k: int = 0                     # TopK's k
    threshold: torch.Tensor | None = None  # [d_sae], JumpReLU

    @property
    def d_in(self) -> int:
        """Width of the activations the SAE reads."""
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        """Number of latents."""
        return int(self.W_enc.shape[1])

    def to(self, device: torch.device | str) -> "SparseAutoencoder":
        """A copy on `device`."""
        thr = None if self.threshold is None else self.threshold.to(device)
        return SparseAutoencoder(self.W_enc.to(device), self.b_enc.to(device), self.b_dec.to(device),
                                 self.activation, self.k, thr)

    def describe(self) -> str:
        """e.g. 'relu, 96 -> 256 latents' (for messages and producer metadata)."""
        act = f"topk k={self.k}" if self.activation == "topk" else self.activation
        return f"{act}, {self.d_in} -> {self.d_sae} latents"


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def _activation_from_metadata(meta: dict[str, str]) -> tuple[str, int]:
    name = (meta.get("activation") or meta.get("activation_fn_str") or meta.get("architecture") or "").lower()
    k = meta.get("k", "")
    kwargs = meta.get("activation_fn_kwargs")
    if not k and kwargs:
        try:
            k = str(json.loads(kwargs).get("k", ""))
        except (ValueError, AttributeError):
            k = ""
    name = {"standard": "relu", "gated": ""}.get(name, name)
    return name, int(k) if str(k).isdigit() else 0


def _pick(tensors: dict[str, torch.Tensor], *names: str) -> torch.Tensor | None:
    for name in names:
        if name in tensors:
            return tensors[name]
    return None


def load_sae(path: str | os.PathLike[str], activation: str = "", k: int = 0) -> SparseAutoencoder:
    """Read and check an SAE safetensors file; raise SaeError naming the keys and shapes expected.

    activation '' takes the file's own (metadata, else JumpReLU when it has a threshold, else
    ReLU); 'topk' needs k >= 1 (from the argument or the file's metadata).
    """
    p = Path(path)
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(p), device="cpu")
        meta = _metadata(p)
    except Exception as exc:  # safetensors raises its own error types
        raise SaeError(f"{p.name} is not a readable safetensors file ({exc}); an SAE file is safetensors "
                       f"with {_EXPECTED}") from exc
    w_enc = _pick(tensors, "W_enc")
    if w_enc is None and "encoder.weight" in tensors:
        w_enc = tensors["encoder.weight"].T
    b_enc = _pick(tensors, "b_enc", "encoder.bias", "latent_bias")
    b_dec = _pick(tensors, "b_dec", "pre_bias")
    threshold = _pick(tensors, "threshold")
    if w_enc is None or b_enc is None or b_dec is None:
        keys = ", ".join(f"{n} {list(t.shape)}" for n, t in sorted(tensors.items())[:10])
        raise SaeError(f"{p.name} is not an SAE file this reader knows: it has {keys}; {_EXPECTED}")
    if w_enc.dim() != 2:
        raise SaeError(f"{p.name}: the encoder weight has shape {list(w_enc.shape)}; {_EXPECTED}")
    d_in, d_sae = w_enc.shape
    for name, tensor, size in (("b_enc", b_enc, d_sae), ("b_dec", b_dec, d_in), ("threshold", threshold, d_sae)):
        if tensor is not None and tuple(tensor.shape) != (size,):
            raise SaeError(f"{p.name}: {name} has shape {list(tensor.shape)} but the encoder weight "
                           f"[{d_in}, {d_sae}] needs [{size}]; {_EXPECTED}")
    file_act, file_k = _activation_from_metadata(meta)
    act = (activation or file_act or ("jumprelu" if threshold is not None else "relu")).lower()
    k = k or file_k
    if act not in ACTIVATIONS:
        raise SaeError(f"{p.name}: unknown SAE activation {act!r}; choose one of {', '.join(ACTIVATIONS)}")
    if act == "topk" and not 1 <= k <= d_sae:
        raise SaeError(f"{p.name}: a TopK SAE needs k between 1 and {d_sae} (got {k}); give it as "
                       f"sae:PATH:topk=K or in the file's metadata 'k'")
    if act == "jumprelu" and threshold is None:
        raise SaeError(f"{p.name}: a JumpReLU SAE needs a 'threshold' tensor [{d_sae}]")
    return SparseAutoencoder(w_enc.float().contiguous(), b_enc.float(), b_dec.float(), act, k,
                             None if threshold is None or act != "jumprelu" else threshold.float())


def encode(sae: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """Latents [N, d_sae] (float32) of activation rows x [N, d_in]."""
    pre = (x.float() - sae.b_dec) @ sae.W_enc + sae.b_enc
    if sae.activation == "relu":
        return torch.relu(pre)
    if sae.activation == "jumprelu":
        return torch.relu(pre) * (pre > sae.threshold)
    top = pre.topk(sae.k, dim=-1)
    return torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))


def encode_pooled(sae: SparseAutoencoder, rows: torch.Tensor, reduce: str = "mean",
                  max_elements: int = DEFAULT_MAX_ELEMENTS) -> torch.Tensor:
    """Latents of every row of rows [B, P, d_in], pooled over P by 'mean' or 'max': [B, d_sae].

    At most `max_elements` latent values exist at once (chunks of rows across images), so the
    memory does not grow with B x P x d_sae.
    """
    if rows.dim() != 3:
        raise ValueError(f"encode_pooled expects [images, positions, d_in], got {tuple(rows.shape)}")
    if rows.shape[2] != sae.d_in:
        raise SaeError(f"the SAE reads {sae.d_in}-wide activations but the layer gives {rows.shape[2]}")
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    b, p, _ = rows.shape
    per_image = p * sae.d_sae
    if per_image <= max_elements:  # whole images per chunk: pool each chunk's codes directly
        step = max_elements // per_image
        parts = []
        for start in range(0, b, step):
            chunk = rows[start:start + step]
            codes = encode(sae, chunk.reshape(-1, chunk.shape[2])).view(chunk.shape[0], p, sae.d_sae)
            parts.append(codes.mean(1) if reduce == "mean" else codes.amax(1))
        return torch.cat(parts)
    # one image is over the budget: chunks of its rows, folded into running sums / maxima
    flat = rows.reshape(b * p, -1)
    owner = torch.arange(b, device=rows.device).repeat_interleave(p)
    out = torch.zeros(b, sae.d_sae, device=rows.device) if reduce == "mean" else \
        torch.full((b, sae.d_sae), float("-inf"), device=rows.device)
    step = max(1, max_elements // sae.d_sae)
    for start in range(0, b * p, step):
        codes = encode(sae, flat[start:start + step])
        idx = owner[start:start + step]
        if reduce == "mean":
            out.index_add_(0, idx, codes)
        else:
            out.scatter_reduce_(0, idx.unsqueeze(1).expand_as(codes), codes, "amax", include_self=True)
    return out / p if reduce == "mean" else out
