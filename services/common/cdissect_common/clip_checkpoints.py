"""CLIP models by name, loaded once for every deployable that uses them.

The embedder embeds images and texts with a CLIP; the activations service dissects a CLIP's
image tower (`clip:NAME` targets). Both must read the same name the same way, so the name ->
checkpoint resolution and the loading live here:

- OpenAI CLIP (`import clip`): every `clip.available_models()` name, fetched into our cache
  folder by our own downloader (fails within seconds when offline and says where to put the
  file); a local checkpoint file in OpenAI's format; or a plugin name of the
  `cdissect.clip_models` entry-point group (the shapes world's `shapes-clip`), which resolves
  to such a file. All three end in the same `clip.load(path, device, jit=False)`.
- open_clip `ARCH[:PRETRAINED_OR_PATH]`: a published pretrained tag (fetched into our cache
  folder), a local checkpoint, or no tag for random weights from a fixed seed.

Importing this module imports neither torch nor clip: they are imported by the functions that
load a model, which only the embedder and the activations service call (both install
clip-anytorch and open_clip_torch).
"""
from __future__ import annotations

import os
import pickle
import urllib.parse
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from .checkpoint_format import CheckpointFormatError, check_checkpoint_file
from .downloads import DownloadError, cache_dir, fetch, host_reachable, sha256_file
from .model_specs import looks_like_path
from .suggest import closest_hint

OPENAI_PREFIX = "openai-clip"
OPEN_CLIP_PREFIX = "open_clip"
ENTRY_POINT_GROUP = "cdissect.clip_models"
RANDOM_SEED = 0
HUB_HOST = "huggingface.co"
HF_DEFAULT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass
class LoadedClip:
    """A loaded CLIP (image and text towers) with what identifies it in artifact keys."""

    model: Any            # clip.model.CLIP or an open_clip model, eval mode, no gradients
    transform: Any        # PIL image -> Tensor[3, H, W]
    model_id: str
    checkpoint_sha256: str
    arch: str = ""        # open_clip architecture name ("" for OpenAI CLIP)


# --- OpenAI CLIP -------------------------------------------------------------------------------

def openai_clip_module():
    """The `clip` package (imports torch)."""
    with warnings.catch_warnings():  # clip imports pkg_resources, which warns on import
        warnings.simplefilter("ignore")
        import clip
    return clip


def clip_plugins() -> dict[str, object]:
    """Entry points of the `cdissect.clip_models` group, by name."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def openai_names() -> list[str]:
    """OpenAI's model names, then plugin names."""
    names = list(openai_clip_module().available_models())
    return names + sorted(n for n in clip_plugins() if n not in names)


def model_url(name: str) -> str:
    """The download URL of an OpenAI model name (from clip's own table)."""
    return openai_clip_module().clip._MODELS[name]


def model_cache_path(name: str) -> Path:
    """Where a named OpenAI checkpoint lives in our cache (and where to copy it by hand)."""
    return cache_dir() / "clip" / os.path.basename(model_url(name))


def resolve_checkpoint(name: str) -> tuple[Path, str, str | None]:
    """(checkpoint path, model_id, expected sha256 or None) for a name, path or plugin."""
    clip = openai_clip_module()
    if name in clip.available_models():
        url = model_url(name)
        return model_cache_path(name), f"{OPENAI_PREFIX}:{name}", url.split("/")[-2]
    if looks_like_path(name):  # the one rule (cdissect_common.model_specs): a name is never looked up on disk
        path = Path(name).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"CLIP checkpoint file {path} does not exist; check the path")
        return path, f"{OPENAI_PREFIX}:file:{path.name}", None
    plugins = clip_plugins()
    if name in plugins:
        plugin_path = Path(str(plugins[name].load()())).expanduser()
        if not plugin_path.is_file():
            raise FileNotFoundError(f"CLIP plugin {name!r} ({plugins[name].value}) points to {plugin_path}, which does not exist")
        return plugin_path, f"{OPENAI_PREFIX}:{name}", None
    known = openai_names()
    hint = closest_hint(name, known)
    raise LookupError(
        f"unknown CLIP model {name!r}.{hint} Use one of {', '.join(known)}, a checkpoint file in "
        f"OpenAI's format, or another backend prefix (open_clip:ARCH[:PRETRAINED], sentence:NAME)."
    )


def load_openai_clip(name: str, device: Any) -> LoadedClip:
    """Load an OpenAI-format CLIP by name, path or plugin name onto `device` (a torch.device).

    As clip.load does: fp16 weights on CUDA, float32 on CPU.
    """
    path, model_id, expected = resolve_checkpoint(name)
    if expected is not None:
        path = fetch(model_url(name), path, expected_sha256=expected)
    try:
        check_checkpoint_file(path)     # a text or empty file: named, instead of clip's KeyError
    except CheckpointFormatError as exc:
        raise ValueError(str(exc)) from None
    clip = openai_clip_module()
    try:
        with warnings.catch_warnings():  # torch.jit.load inside clip.load is deprecated in torch 2.x
            warnings.simplefilter("ignore", FutureWarning)
            model, transform = clip.load(str(path), device=device, jit=False, download_root=str(cache_dir() / "clip"))
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
    return LoadedClip(model.eval().requires_grad_(False), transform, model_id, sha256_file(path))


# --- open_clip ---------------------------------------------------------------------------------

def open_clip_module():
    """The `open_clip` package (imports torch)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import open_clip
    return open_clip


def open_clip_names() -> list[str]:
    """Every published `ARCH:TAG` pair open_clip knows (the weights may still need downloading)."""
    return [f"{arch}:{tag}" for arch, tag in open_clip_module().list_pretrained()]


def check_open_clip_arch(arch: str) -> None:
    """LookupError with the closest names when open_clip has no architecture `arch`."""
    known = open_clip_module().list_models()
    if arch not in known:
        hint = closest_hint(arch, known)
        raise LookupError(f"unknown open_clip architecture {arch!r}.{hint} open_clip.list_models() lists all {len(known)}.")


def open_clip_pretrained_file(arch: str, tag: str) -> Path:
    """The weights file of a published open_clip tag: from our cache, else downloaded (fail fast offline)."""
    open_clip = open_clip_module()
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise LookupError(
            f"open_clip has no pretrained weights {tag!r} for {arch}; choose one of "
            f"{', '.join(tags) or '(none published)'}, a local checkpoint path, or no tag for random weights"
        )
    target = cache_dir() / "open_clip"
    source = cfg.get("hf_hub") or cfg.get("url") or ""
    cached = _cached_pretrained(cfg, target)
    if cached is not None:
        return cached
    host = HUB_HOST if cfg.get("hf_hub") else urllib.parse.urlparse(cfg.get("url", "")).hostname or HUB_HOST
    offline_hint = (f"download the checkpoint elsewhere and pass its path as open_clip:{arch}:/path/to/file, "
                    f"or copy the hub cache into {target}.")
    if not host_reachable(host):
        raise DownloadError(
            f"open_clip weights {arch}:{tag} are not in {target} and {host} cannot be reached "
            f"(offline; source {source}). {offline_hint[0].upper()}{offline_hint[1:]}"
        )
    try:
        return Path(open_clip.download_pretrained(cfg, cache_dir=str(target)))
    except Exception as exc:  # hub and urllib errors differ; all mean "not available here"
        raise DownloadError(
            f"could not fetch open_clip weights {arch}:{tag} from {source} ({type(exc).__name__}: {exc}); "
            f"{offline_hint}"
        ) from exc


def _cached_pretrained(cfg: dict, target: Path) -> Path | None:
    """The already-downloaded weights file for a pretrained config, without touching the network."""
    if cfg.get("file"):
        return Path(cfg["file"])
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        hub = cfg["hf_hub"]  # 'org/repo/' (default file names) or 'org/repo/file.bin'
        repo, filename = (hub.rstrip("/"), "") if hub.endswith("/") else os.path.split(hub)
        candidates = [filename] if filename else list(HF_DEFAULT_FILES)
        if filename.endswith((".bin", ".pth")):
            candidates.insert(0, filename[:-4] + ".safetensors")
        for name in candidates:
            hit = try_to_load_from_cache(repo, name, cache_dir=str(target))
            if isinstance(hit, str):
                return Path(hit)
        return None
    url = cfg.get("url")
    if url and (target / os.path.basename(url)).is_file():
        return target / os.path.basename(url)
    return None


def load_open_clip(spec: str, device: Any, precision: str = "fp32") -> LoadedClip:
    """Load open_clip `ARCH[:PRETRAINED_OR_PATH]` onto `device` in precision 'fp32' or 'fp16'."""
    import torch

    open_clip = open_clip_module()
    arch, _, pretrained = spec.partition(":")
    arch, pretrained = arch.strip(), pretrained.strip()
    check_open_clip_arch(arch)
    if not pretrained:
        path, model_id, sha = None, f"{OPEN_CLIP_PREFIX}:{arch}:random-init:{RANDOM_SEED}", f"random-init:{RANDOM_SEED}"
    elif looks_like_path(pretrained):  # the one rule: a tag is never looked up on disk
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"open_clip checkpoint {pretrained} does not exist; check the path")
        model_id, sha = f"{OPEN_CLIP_PREFIX}:{arch}:file:{path.name}", sha256_file(path)
    else:
        path = open_clip_pretrained_file(arch, pretrained)
        model_id, sha = f"{OPEN_CLIP_PREFIX}:{arch}:{pretrained}", sha256_file(path)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(RANDOM_SEED)
        warnings.simplefilter("ignore")
        try:
            model, _, transform = open_clip.create_model_and_transforms(
                arch, pretrained=str(path) if path else None, precision=precision, device=device,
                cache_dir=str(cache_dir() / "open_clip"))
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ValueError(f"could not build open_clip {arch} with weights {pretrained or 'random'}: {exc}") from exc
    return LoadedClip(model.eval().requires_grad_(False), transform, model_id, sha, arch)
