"""Embedding backends addressed by name: `load_backend("ViT-B/16")`, `load_backend("open_clip:RN50")`.

A name is `PREFIX:REST` for a registered prefix, else an OpenAI CLIP name, checkpoint path or
plugin name (the default backend, as in the reference). Built-in prefixes: `openai-clip`,
`open_clip`, `sentence`. A new backend (SigLIP, a domain CLIP) is one module with a
`load(rest, device, precision) -> ClipBackend` function plus one `register_backend` call.
Backend modules are imported only when used (open_clip and sentence-transformers are slow to import).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .base import ClipBackend

Loader = Callable[[str, "str | torch.device", "str | None"], ClipBackend]
DEFAULT_PREFIX = "openai-clip"


@dataclass(frozen=True)
class _Entry:
    loader: Loader
    names: Callable[[], list[str]] | None


_REGISTRY: dict[str, _Entry] = {}


def _lazy(module: str, attr: str) -> Callable:
    def call(*args, **kwargs):
        return getattr(importlib.import_module(f"{__package__}.{module}"), attr)(*args, **kwargs)
    return call


def register_backend(prefix: str, loader: Loader, names: Callable[[], list[str]] | None = None) -> None:
    """Make `PREFIX:REST` names load through `loader(rest, device, precision)`.

    `names`, if given, lists the REST values to advertise in available_models().
    """
    if not prefix or ":" in prefix or prefix != prefix.strip():
        raise ValueError(f"backend prefix {prefix!r} must be a non-empty word without ':' or spaces")
    if not callable(loader):
        raise TypeError(f"loader for backend {prefix!r} must be callable")
    _REGISTRY[prefix] = _Entry(loader, names)


register_backend("openai-clip", _lazy("openai_clip", "load"), _lazy("openai_clip", "list_names"))
register_backend("open_clip", _lazy("open_clip_backend", "load"), _lazy("open_clip_backend", "list_names"))
register_backend("sentence", _lazy("sentence", "load"), _lazy("sentence", "list_names"))


def backends() -> list[str]:
    """The registered prefixes."""
    return sorted(_REGISTRY)


def available_models() -> list[str]:
    """OpenAI CLIP names (and plugin names) unprefixed, then `prefix:name` for the other backends."""
    out: list[str] = []
    for prefix, entry in _REGISTRY.items():
        if entry.names is None:
            continue
        names = entry.names()
        out.extend(names if prefix == DEFAULT_PREFIX else [f"{prefix}:{n}" for n in names])
    return out


def split_name(name_or_path: str) -> tuple[str, str]:
    """'open_clip:RN50:openai' -> ('open_clip', 'RN50:openai'); 'ViT-B/16' -> ('openai-clip', 'ViT-B/16')."""
    text = (name_or_path or "").strip()
    if not text:
        raise ValueError("empty CLIP model name; give one such as 'ViT-B/16' (see available_models())")
    prefix, sep, rest = text.partition(":")
    if sep and prefix in _REGISTRY:
        if not rest.strip():
            raise ValueError(f"{text!r} names the backend {prefix!r} but no model; e.g. '{prefix}:NAME'")
        return prefix, rest.strip()
    return DEFAULT_PREFIX, text


def load_backend(name_or_path: str, device: str | torch.device = "auto", precision: str | None = None) -> ClipBackend:
    """Load the embedding model `name_or_path` on `device` ('cpu' | 'cuda' | 'auto').

    precision None is the reference's choice (fp16 on CUDA, fp32 on CPU); 'fp32' or 'fp16' force it.
    """
    prefix, rest = split_name(name_or_path)
    return _REGISTRY[prefix].loader(rest, device, precision)
