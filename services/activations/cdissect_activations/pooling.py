"""Pooling a layer's output to one number per unit and image: [B, ...] -> float32 [B, units].

The reference (utils.get_activation) pools by rank of the hooked output:
- 4-D [B, C, H, W] conv maps: mean ('avg', default) or amax ('max') over H, W;
- 3-D [B, T, D] token sequences: token 0, the CLS token, in both modes. We add two options:
  'mean' (all tokens) and 'patch_mean' (tokens 1.., i.e. without CLS);
  a model's `TokenLayout` says where its CLS and register tokens sit (timm and Hugging Face ViTs,
  DINOv2 with registers): register tokens are left out of 'mean', 'patch_mean' averages the
  patch tokens only, and 'cls' on a model without a CLS token is an error, not token 0;
- 2-D [B, D]: unchanged.
Tuple outputs (attention blocks, some custom modules) use their first element. Channels-last
maps [B, H, W, C] (Swin stages, the inside of ConvNeXt blocks) are pooled over H, W as well when
the caller says so (hooks.py finds them with layers.channels_last_modules).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from cdissect_common.vocabulary import POOLINGS, TOKEN_POOLINGS


def check_pooling(pooling: str, token_pooling: str = "cls") -> None:
    """Raise ValueError naming the valid choices when a pooling name is unknown."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)} (avg is the reference's default)")
    if token_pooling not in TOKEN_POOLINGS:
        raise ValueError(
            f"unknown token_pooling {token_pooling!r}; choose one of {', '.join(TOKEN_POOLINGS)} "
            f"(cls is the reference's default)"
        )


@dataclass(frozen=True)
class TokenLayout:
    """Where the special tokens sit at the front of a model's [B, T, D] token sequences.

    cls: token 0 is a CLS token. registers: register tokens that follow it (before the patches).
    tokens: the sequence length of the model's blocks, which the layout describes; outputs of
    another length (e.g. a patch embedding, before the CLS token is added) are plain patches.
    None: every 3-D output (the reference's rule for torchvision ViTs).
    """

    cls: bool = True
    registers: int = 0
    tokens: int | None = None

    @property
    def prefix(self) -> int:
        """How many special tokens precede the patches."""
        return int(self.cls) + self.registers


DEFAULT_LAYOUT = TokenLayout()


def token_rows(x: torch.Tensor, token_pooling: str, layout: TokenLayout = DEFAULT_LAYOUT,
               layer: str = "layer") -> torch.Tensor:
    """The tokens of x [B, T, D] that `token_pooling` averages: [B, P, D] (P = 1 for 'cls')."""
    if layout.tokens is not None and x.shape[1] != layout.tokens:
        layout = TokenLayout(cls=False, registers=0)  # no special tokens in this sequence
    if token_pooling == "cls":
        if not layout.cls:
            regs = f" ({layout.registers} register token(s) come first)" if layout.registers else ""
            raise ValueError(f"{layer} has no CLS token{regs}; use token pooling 'mean' or 'patch_mean'")
        return x[:, :1]
    if token_pooling == "mean":
        if not layout.registers:
            return x
        return torch.cat([x[:, :int(layout.cls)], x[:, layout.prefix:]], dim=1)
    if x.shape[1] <= layout.prefix or (layout.tokens is None and x.shape[1] < 2):
        raise ValueError(f"{layer} has {x.shape[1]} token(s); patch_mean needs a CLS token plus patches")
    return x[:, layout.prefix:] if layout.prefix else x


def positions(x: torch.Tensor, pooling: str = "avg", token_pooling: str = "cls",
              layout: TokenLayout = DEFAULT_LAYOUT, layer: str = "layer") -> tuple[torch.Tensor, str]:
    """A layout-normalised output as rows per image [B, P, D] and how `pool` reduces them ('mean'|'max').

    Conv maps [B, C, H, W] give their H*W positions, token sequences the tokens the token
    pooling uses, [B, D] one row. What sparse-autoencoder features encode before pooling.
    """
    check_pooling(pooling, token_pooling)
    if x.dim() == 4:
        return x.flatten(2).transpose(1, 2), ("mean" if pooling == "avg" else "max")
    if x.dim() == 3:
        return token_rows(x, token_pooling, layout, layer), "mean"
    if x.dim() == 2:
        return x.unsqueeze(1), "mean"
    raise ValueError(_rank_message(x, layer))


def _rank_message(x: torch.Tensor, layer: str) -> str:
    return (f"{layer} outputs a {x.dim()}-D tensor of shape {tuple(x.shape)}; only 4-D conv maps "
            f"[B,C,H,W], 3-D tokens [B,T,D] and 2-D [B,D] can be pooled. Hook another layer.")


def first_tensor(output: object, layer: str = "layer") -> torch.Tensor:
    """The tensor a hook should pool: the output itself, or the first element of a tuple/list."""
    if isinstance(output, (tuple, list)):
        if not output:
            raise TypeError(f"{layer} returned an empty {type(output).__name__}; hook a different layer")
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise TypeError(
            f"{layer} outputs {type(output).__name__}, not a tensor (or a tuple starting with one); "
            f"hook one of its submodules instead (see `cdissect layers MODEL`)"
        )
    return output


def standard_layout(output: torch.Tensor, channels_last: bool = False, seq_first: bool = False) -> torch.Tensor:
    """A hooked output as [B, C, H, W] / [B, T, D]: channels-last maps and sequence-first tokens
    ([T, B, D], OpenAI CLIP's transformer) are transposed."""
    x = output.detach()
    if x.dim() == 4 and channels_last:
        x = x.permute(0, 3, 1, 2)
    if x.dim() == 3 and seq_first:
        x = x.transpose(0, 1)
    return x


def pool(output: torch.Tensor, pooling: str = "avg", token_pooling: str = "cls", layer: str = "layer",
         channels_last: bool = False, layout: TokenLayout = DEFAULT_LAYOUT, seq_first: bool = False) -> torch.Tensor:
    """Pool one hooked output to float32 [B, units], on the output's own device.

    channels_last=True: a 4-D output is [B, H, W, C] rather than [B, C, H, W]; seq_first=True: a
    3-D output is [T, B, D]. layout: where the model's CLS and register tokens are.
    """
    check_pooling(pooling, token_pooling)
    x = standard_layout(output, channels_last, seq_first)
    if x.dim() == 4:
        pooled = x.mean(dim=(2, 3)) if pooling == "avg" else x.amax(dim=(2, 3))
    elif x.dim() == 3:
        pooled = token_rows(x, token_pooling, layout, layer).mean(dim=1)
    elif x.dim() == 2:
        pooled = x
    else:
        raise ValueError(_rank_message(x, layer))
    return pooled.float()
