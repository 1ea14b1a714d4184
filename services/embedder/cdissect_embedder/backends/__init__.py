"""Embedding backends (OpenAI CLIP, open_clip, sentence-transformers) behind one registry."""
from .base import ClipBackend, TextOnlyModelError
from .registry import available_models, backends, load_backend, register_backend

__all__ = ["ClipBackend", "TextOnlyModelError", "available_models", "backends",
           "load_backend", "register_backend"]
