"""Safe reading of state-dict checkpoints: safetensors, or torch.load with weights_only=True.

A checkpoint file is data from somewhere else. A plain pickle can run any code while it loads,
so we never unpickle arbitrary objects: safetensors files are read as tensors only, and torch's
formats (told apart by their first bytes, not the suffix) go through torch's restricted unpickler (tensors, containers, numbers, strings). The common
wrappers are unwrapped (`{'state_dict': …}` as the Places365 release, `{'model': …}`), and the
`module.` prefix that DataParallel adds is stripped.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from cdissect_common.checkpoint_format import SAVE_HINT, CheckpointFormatError, check_checkpoint_file

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
DATA_PARALLEL_PREFIX = "module."


class CheckpointError(ValueError):
    """A checkpoint file cannot be read safely or does not hold a state dict."""


def read_checkpoint(path: str | os.PathLike[str]) -> object:
    """The object stored in a checkpoint file, read without executing pickled code.

    The file's first bytes decide the loader (`cdissect_common.checkpoint_format`): safetensors
    files are read with safetensors, torch's formats with `torch.load(weights_only=True)`. A file
    in neither format, one that cannot be parsed (truncated, damaged), or one that needs
    arbitrary Python objects is refused with a CheckpointError naming the file and the fix.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint file {p} does not exist (or is not a file); check the path")
    try:
        kind = check_checkpoint_file(p)
    except CheckpointFormatError as exc:
        raise CheckpointError(str(exc)) from None
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise CheckpointError(f"{p} is a safetensors file that cannot be read ({exc}); it may be truncated "
                                  f"or damaged: {SAVE_HINT}") from None
    try:
        return torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):
            raise CheckpointError(_unreadable(p, kind, exc)) from None
        raise CheckpointError(
            f"refused to load {p}: it contains Python objects other than tensors and plain "
            f"containers, and unpickling them could execute code. Re-save only the weights, e.g. "
            f"torch.save(model.state_dict(), path) or safetensors.torch.save_file(model.state_dict(), "
            f"'weights.safetensors'). Details: {str(exc).splitlines()[0]}"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - torch.load fails with many types on damaged files
        raise CheckpointError(_unreadable(p, kind, exc)) from None


def _unreadable(path: Path, kind: str, exc: BaseException) -> str:
    """The message for a file in a checkpoint format whose content torch cannot parse."""
    detail = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return (f"{path} starts like a torch checkpoint ({kind}) but cannot be read ({type(exc).__name__}: {detail}); "
            f"it may be truncated or damaged: copy it again, or {SAVE_HINT}")


def unwrap_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensor mapping inside a loaded checkpoint: itself, or under 'state_dict'/'model'."""
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"{source} does not hold a state dict (a mapping of parameter names to tensors); "
            f"save one with torch.save(model.state_dict(), path)"
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ", ".join(sorted(map(str, obj))[:8])
        raise CheckpointError(
            f"{source} has no tensors at its top level (keys: {keys}); expected a state dict or "
            f"a dict with one under {' / '.join(WRAPPER_KEYS)}"
        )
    return tensors


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = DATA_PARALLEL_PREFIX,
                 drop_unprefixed: bool = False) -> dict[str, torch.Tensor]:
    """Remove `prefix` from keys that start with it.

    With drop_unprefixed=True, keys without the prefix are dropped, as the reference does when it
    loads the Places365 ResNet-18 (`{k[7:]: v for k in sd if k.startswith('module.')}`).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(prefix):
            out[key[len(prefix):]] = value
        elif not drop_unprefixed:
            out[key] = value
    return out


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A user's weight file as a clean state dict: safe read, unwrapped, `module.` stripped."""
    return strip_prefix(unwrap_state_dict(read_checkpoint(path), source=str(path)))


def apply_state_dict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load `state_dict` into `model` strictly, turning a mismatch into an error that says why."""
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(
            f"weights in {source} do not fit {type(model).__name__}: {exc}. Check that the "
            f"architecture name matches the checkpoint (e.g. resnet50:/path/ckpt.pth)"
        ) from exc
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:4])})")
        raise CheckpointError(
            f"weights in {source} do not fit {type(model).__name__}: {'; '.join(parts)}. "
            f"Check that the architecture name matches the checkpoint (e.g. resnet50:/path/ckpt.pth)"
        )
