"""Device names of the torch-running services: 'cpu', 'cuda', 'cuda:N' or 'auto'.

cdissect_common never imports torch at import time (the CLI depends on this package and must
stay torch-free), so torch is imported inside the function, which only the services call.
"""
from __future__ import annotations

from typing import Any


def resolve_device(device: Any) -> Any:
    """A torch.device for a name ('auto' or None: CUDA when available, else CPU).

    Asking for CUDA on a machine without it is an error that names the fix, not a silent
    fallback: a run that was meant for a GPU should not quietly take hours on a CPU.
    """
    import torch

    if isinstance(device, torch.device):
        return device
    text = str(device or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here; use 'cpu' or 'auto'")
    try:
        return torch.device(text)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'") from exc
