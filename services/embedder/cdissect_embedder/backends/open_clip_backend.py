"""open_clip models: names `open_clip:ARCH[:PRETRAINED_OR_PATH]`.

- `open_clip:ViT-B-32:laion2b_s34b_b79k`: a published pretrained tag, fetched into our cache
  folder (fails fast with a clear message when offline);
- `open_clip:ViT-B-32:/path/weights.pt`: a local checkpoint (open_clip loads it with
  weights_only=True);
- `open_clip:ViT-B-32`: random weights from a fixed seed (tests, smoke runs).
Preprocessing is open_clip's evaluation transform for the model; precision as for OpenAI CLIP
(fp16 on CUDA, fp32 on CPU unless asked otherwise).
"""
from __future__ import annotations

import os
import urllib.parse
import warnings
from pathlib import Path

import torch

from cdissect_common.downloads import DownloadError, cache_dir, host_reachable, sha256_file
from cdissect_common.suggest import closest_hint
from cdissect_common.userfiles import looks_like_path

from .base import ClipBackend, describe_transform, resolve_device, resolve_precision

PREFIX = "open_clip"
RANDOM_SEED = 0
HUB_HOST = "huggingface.co"
HF_DEFAULT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _open_clip():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import open_clip
    return open_clip


def list_names() -> list[str]:
    """Every published `ARCH:TAG` pair open_clip knows (the weights may still need downloading)."""
    return [f"{arch}:{tag}" for arch, tag in _open_clip().list_pretrained()]


class OpenClipBackend(ClipBackend):
    """A model made by open_clip.create_model_and_transforms."""

    def __init__(self, model, transform, tokenizer, model_id: str, checkpoint_sha256: str,
                 embed_dim: int, device: torch.device, torch_dtype: torch.dtype) -> None:
        super().__init__(device, torch_dtype)
        self.model = model
        self.transform = transform
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.checkpoint_sha256 = checkpoint_sha256
        self.embed_dim = embed_dim
        self.preprocess_id = "open_clip|" + describe_transform(transform)

    def _image_transform(self):
        return self.transform

    def _encode_image_batch(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)

    def _encode_text_batch(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device))


def _check_arch(arch: str) -> None:
    known = _open_clip().list_models()
    if arch not in known:
        hint = closest_hint(arch, known)
        raise LookupError(f"unknown open_clip architecture {arch!r}.{hint} open_clip.list_models() lists all {len(known)}.")


def _pretrained_file(arch: str, tag: str) -> Path:
    open_clip = _open_clip()
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


def load(spec: str, device: str | torch.device = "auto", precision: str | None = None) -> OpenClipBackend:
    """Load `ARCH[:PRETRAINED_OR_PATH]` (the part after 'open_clip:') onto `device`."""
    open_clip = _open_clip()
    arch, _, pretrained = spec.partition(":")
    arch, pretrained = arch.strip(), pretrained.strip()
    _check_arch(arch)
    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    precision_name = "fp16" if dtype == torch.float16 else "fp32"
    if not pretrained:
        path, model_id, sha = None, f"{PREFIX}:{arch}:random-init:{RANDOM_SEED}", f"random-init:{RANDOM_SEED}"
    elif looks_like_path(pretrained):  # the one rule: a tag is never looked up on disk
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"open_clip checkpoint {pretrained} does not exist; check the path")
        model_id, sha = f"{PREFIX}:{arch}:file:{path.name}", sha256_file(path)
    else:
        path = _pretrained_file(arch, pretrained)
        model_id, sha = f"{PREFIX}:{arch}:{pretrained}", sha256_file(path)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(RANDOM_SEED)
        warnings.simplefilter("ignore")
        try:
            model, _, transform = open_clip.create_model_and_transforms(
                arch, pretrained=str(path) if path else None, precision=precision_name, device=dev,
                cache_dir=str(cache_dir() / "open_clip"))
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ValueError(f"could not build open_clip {arch} with weights {pretrained or 'random'}: {exc}") from exc
    model = model.eval().requires_grad_(False)
    embed_dim = int(open_clip.get_model_config(arch)["embed_dim"])
    tokenizer = open_clip.get_tokenizer(arch)
    return OpenClipBackend(model, transform, tokenizer, model_id, sha, embed_dim, dev, dtype)
