"""OpenAI CLIP through `import clip`, as the reference uses it.

Accepted names: every `clip.available_models()` name (ViT-B/16 is the reference's default), a
local checkpoint file in OpenAI's format (TorchScript archive or plain state dict), or a plugin
name from the `cdissect.clip_models` entry-point group (the shapes world's `shapes-clip`), which
resolves to such a file. All three end in the same `clip.load(path, device, jit=False)`.

Precision follows the reference: clip.load builds fp16 weights on CUDA and casts to float32 on
CPU. fp32 on CUDA is an option (precision='fp32'). Named models are fetched into our cache
folder by our own downloader, which fails within seconds when offline and says where to put the file.
"""
from __future__ import annotations

import os
import pickle
import warnings
from importlib.metadata import entry_points
from pathlib import Path

import torch

from cdissect_common.downloads import cache_dir, fetch, sha256_file
from cdissect_common.suggest import closest_hint
from cdissect_common.userfiles import looks_like_path

from .base import ClipBackend, describe_transform, resolve_device, resolve_precision

PREFIX = "openai-clip"
ENTRY_POINT_GROUP = "cdissect.clip_models"
CONTEXT_LENGTH = 77


def _clip():
    with warnings.catch_warnings():  # clip imports pkg_resources, which warns on import
        warnings.simplefilter("ignore")
        import clip
    return clip


def _plugins() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def list_names() -> list[str]:
    """OpenAI's model names, then plugin names."""
    names = list(_clip().available_models())
    return names + sorted(n for n in _plugins() if n not in names)


def model_url(name: str) -> str:
    """The download URL of an OpenAI model name (from clip's own table)."""
    return _clip().clip._MODELS[name]


def model_cache_path(name: str) -> Path:
    """Where a named OpenAI checkpoint lives in our cache (and where to copy it by hand)."""
    return cache_dir() / "clip" / os.path.basename(model_url(name))


class OpenAIClip(ClipBackend):
    """A model loaded with clip.load; see the module docstring."""

    def __init__(self, model, transform, model_id: str, checkpoint_sha256: str,
                 device: torch.device, torch_dtype: torch.dtype) -> None:
        super().__init__(device, torch_dtype)
        self.model = model
        self.transform = transform
        self.model_id = model_id
        self.checkpoint_sha256 = checkpoint_sha256
        self.embed_dim = int(model.text_projection.shape[1])
        self.input_resolution = int(model.visual.input_resolution)
        self.preprocess_id = "openai-clip|" + describe_transform(transform)

    def _image_transform(self):
        return self.transform

    def _encode_image_batch(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)

    def _encode_text_batch(self, texts: list[str]) -> torch.Tensor:
        tokens = _clip().tokenize(texts, context_length=CONTEXT_LENGTH, truncate=True).to(self.device)
        return self.model.encode_text(tokens)


def resolve_checkpoint(name: str) -> tuple[Path, str, str | None]:
    """(checkpoint path, model_id, expected sha256 or None) for a name, path or plugin."""
    clip = _clip()
    if name in clip.available_models():
        url = model_url(name)
        return model_cache_path(name), f"{PREFIX}:{name}", url.split("/")[-2]
    if looks_like_path(name):  # the one rule: a name is never looked up on disk
        path = Path(name).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"CLIP checkpoint file {path} does not exist; check the path")
        return path, f"{PREFIX}:file:{path.name}", None
    plugins = _plugins()
    if name in plugins:
        plugin_path = Path(str(plugins[name].load()())).expanduser()
        if not plugin_path.is_file():
            raise FileNotFoundError(f"CLIP plugin {name!r} ({plugins[name].value}) points to {plugin_path}, which does not exist")
        return plugin_path, f"{PREFIX}:{name}", None
    known = list_names()
    hint = closest_hint(name, known)
    raise LookupError(
        f"unknown CLIP model {name!r}.{hint} Use one of {', '.join(known)}, a checkpoint file in "
        f"OpenAI's format, or another backend prefix (open_clip:ARCH[:PRETRAINED], sentence:NAME)."
    )


def load(name: str, device: str | torch.device = "auto", precision: str | None = None) -> OpenAIClip:
    """Load an OpenAI-format CLIP by name, path or plugin name onto `device`."""
    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    path, model_id, expected = resolve_checkpoint(name)
    if expected is not None:
        path = fetch(model_url(name), path, expected_sha256=expected)
    clip = _clip()
    try:
        with warnings.catch_warnings():  # torch.jit.load inside clip.load is deprecated in torch 2.x
            warnings.simplefilter("ignore", FutureWarning)
            model, transform = clip.load(str(path), device=dev, jit=False, download_root=str(cache_dir() / "clip"))
    except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) refused it
        raise ValueError(
            f"refused to load {path}: it holds Python objects other than tensors, and unpickling them "
            f"could execute code. Save only the weights: torch.save(model.state_dict(), path)."
        ) from exc
    except Exception as exc:  # a malformed file surfaces as runtime/key errors from clip
        raise ValueError(
            f"{path} could not be loaded as an OpenAI CLIP checkpoint (a TorchScript archive or a "
            f"plain state dict saved with torch.save): {type(exc).__name__}: {exc}"
        ) from exc
    model = model.eval().requires_grad_(False)
    if dtype == torch.float32:
        model = model.float()  # fp32 on CUDA by choice; on CPU clip.load already did this
    return OpenAIClip(model, transform, model_id, sha256_file(path), dev, dtype)
