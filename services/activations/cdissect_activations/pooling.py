"""Pooling a layer's output to one number per unit and image: [B, ...] -> float32 [B, units].

The reference (utils.get_activation) pools by rank of the hooked output:
- 4-D [B, C, H, W] conv maps: mean ('avg', default) or amax ('max') over H, W;
- 3-D [B, T, D] token sequences: token 0, the CLS token, in both modes. We add two options:
  'mean' (all tokens) and 'patch_mean' (tokens 1.., i.e. without CLS);
- 2-D [B, D]: unchanged.
Tuple outputs (attention blocks, some custom modules) use their first element. Channels-last
maps [B, H, W, C] (Swin stages, the inside of ConvNeXt blocks) are pooled over H, W as well when
the caller says so (hooks.py finds them with layers.channels_last_modules).
"""
from __future__ import annotations

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


def pool(output: torch.Tensor, pooling: str = "avg", token_pooling: str = "cls", layer: str = "layer",
         channels_last: bool = False) -> torch.Tensor:
    """Pool one hooked output to float32 [B, units], on the output's own device.

    channels_last=True: a 4-D output is [B, H, W, C] rather than [B, C, H, W].
    """
    check_pooling(pooling, token_pooling)
    x = output.detach()
    if x.dim() == 4 and channels_last:
        x = x.permute(0, 3, 1, 2)
    if x.dim() == 4:
        pooled = x.mean(dim=(2, 3)) if pooling == "avg" else x.amax(dim=(2, 3))
    elif x.dim() == 3:
        if token_pooling == "cls":
            pooled = x[:, 0]
        elif token_pooling == "mean":
            pooled = x.mean(dim=1)
        else:
            if x.shape[1] < 2:
                raise ValueError(f"{layer} has {x.shape[1]} token(s); patch_mean needs a CLS token plus patches")
            pooled = x[:, 1:].mean(dim=1)
    elif x.dim() == 2:
        pooled = x
    else:
        raise ValueError(
            f"{layer} outputs a {x.dim()}-D tensor of shape {tuple(x.shape)}; only 4-D conv maps "
            f"[B,C,H,W], 3-D tokens [B,T,D] and 2-D [B,D] can be pooled. Hook another layer."
        )
    return pooled.float()
