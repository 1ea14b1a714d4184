"""timm targets: `timm:NAME` or `timm:NAME.TAG` (e.g. `timm:convnext_tiny`, `timm:resnet50.a1_in1k`).

Weights (the `weights` argument):
- "" / None: timm's pretrained weights for NAME (or NAME.TAG), read from the Hugging Face hub
  cache in our cache folder (`<cache_dir>/huggingface`) or downloaded there; offline without
  them: a DownloadError within seconds naming the folder and how to fill it;
- "none": random init from a fixed seed;
- a local path: a user's state dict (`timm:NAME:/path/ckpt.safetensors`; the service passes the
  copy it fetched from the store by digest), checked to fit the architecture.
Preprocessing is timm's data config for the model (`resolve_data_config` + `create_transform`).
ViTs get their token layout (CLS and register tokens) so CLS / mean / patch_mean pooling skip
the registers; channels-last outputs (Swin stages, dynamic-size patch embeddings) are marked.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
from torch import nn

from cdissect_common.downloads import DownloadError, cache_dir, host_reachable, sha256_file
from cdissect_common.suggest import closest_hint

from .checkpoints import apply_state_dict, load_state_dict_file
from .pooling import TokenLayout

PREFIX = "timm"
HUB_HOST = "huggingface.co"
HUB_FILES = ("model.safetensors", "pytorch_model.bin")
# What `cdissect models` shows; `cdissect models --all` lists every architecture and tag.
SUBSET = ("convnext_tiny", "resnet50.a1_in1k", "vit_base_patch16_224", "vit_small_patch16_224.augreg_in21k_ft_in1k",
          "vit_small_patch14_reg4_dinov2.lvd142m", "deit_small_patch16_224", "efficientnet_b0",
          "swin_tiny_patch4_window7_224", "test_vit2", "test_resnet")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _timm():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import timm
    return timm


def hub_cache() -> Path:
    """The Hugging Face hub cache folder of our weights cache (timm and hf: targets)."""
    return cache_dir() / "huggingface"


def list_names(every: bool = False) -> list[str]:
    """`timm:NAME` for a sensible subset, or (every=True) every architecture and pretrained tag."""
    if not every:
        return [f"{PREFIX}:{n}" for n in SUBSET]
    timm = _timm()
    return [f"{PREFIX}:{n}" for n in sorted(set(timm.list_models()) | set(timm.list_models(pretrained=True)))]


def check_name(name: str) -> None:
    """LookupError with the closest timm names when `name` is neither an architecture nor ARCH.TAG."""
    timm = _timm()
    arch, _, tag = name.partition(".")
    if arch in timm.list_models() and (not tag or name in timm.list_models(pretrained=True)):
        return
    if arch in timm.list_models():
        tags = [n for n in timm.list_models(f"{arch}.*", pretrained=True)]
        raise LookupError(f"timm has no pretrained weights {name!r}; tags of {arch}: {', '.join(tags) or '(none)'}")
    known = sorted(set(timm.list_models()) | set(timm.list_models(pretrained=True)))
    hint = closest_hint(name, known)
    raise LookupError(f"unknown timm model {name!r}.{hint} `cdissect models --all` lists all {len(known)} "
                      f"(timm.list_models(pretrained=True) the ones with weights).")


def _create(name: str, **kwargs) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _timm().create_model(name, **kwargs)


def pretrained_file(name: str, cfg: dict) -> Path:
    """The weights file of timm's pretrained config: from the hub cache, else downloaded (fail fast offline)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    hub = cfg.get("hf_hub_id") or ""
    if not hub:
        raise DownloadError(f"timm:{name} has no weights on the Hugging Face hub (source {cfg.get('url') or 'none'}); "
                            f"pass a checkpoint as timm:{name}:/path/to/weights.safetensors or use --weights none")
    repo, _, revision = hub.partition("@")
    files = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else list(HUB_FILES)
    folder = hub_cache()
    for filename in files:
        hit = try_to_load_from_cache(repo, filename, cache_dir=str(folder), revision=revision or None)
        if isinstance(hit, str):
            return Path(hit)
    fix = (f"Download them elsewhere (hf download {repo} --cache-dir DIR) and copy DIR's contents into {folder}, "
           f"pass a checkpoint as timm:{name}:/path/to/weights.safetensors, or use --weights none for random weights.")
    if not host_reachable(HUB_HOST):
        raise DownloadError(f"timm weights {name} ({repo}) are not in {folder} and {HUB_HOST} cannot be reached "
                            f"(offline). {fix}", url=f"https://{HUB_HOST}/{repo}", dest=folder)
    errors = []
    for filename in files:
        try:
            return Path(hf_hub_download(repo, filename, cache_dir=str(folder), revision=revision or None))
        except Exception as exc:  # noqa: BLE001 - try the next file name; all failing is reported below
            errors.append(f"{filename}: {type(exc).__name__}")
    raise DownloadError(f"could not fetch timm weights {name} from {repo} ({'; '.join(errors)}). {fix}",
                        url=f"https://{HUB_HOST}/{repo}", dest=folder)


def hub_file_identity(path: Path) -> tuple[str, str]:
    """(revision, sha256) of a file in a hub cache: the snapshot's commit and the blob's digest.

    Large files are stored under their sha256 (the blob's name), so no re-reading is needed.
    """
    blob = path.resolve()
    digest = blob.name if _SHA256.fullmatch(blob.name) else sha256_file(blob, remember=False)
    revision = path.parent.name if path.parent.parent.name == "snapshots" else "local"
    return revision, digest


def token_layout(model: nn.Module) -> TokenLayout:
    """CLS / register tokens of a timm ViT-like model (anything with patch_embed.num_patches)."""
    patches = getattr(getattr(model, "patch_embed", None), "num_patches", None)
    if patches is None or not hasattr(model, "num_prefix_tokens"):
        return TokenLayout()
    cls = getattr(model, "cls_token", None) is not None
    registers = int(getattr(model, "num_reg_tokens", 0) or 0)
    return TokenLayout(cls=cls, registers=registers, tokens=int(patches) + int(model.num_prefix_tokens))


def channels_last(model: nn.Module) -> frozenset[int]:
    """ids of modules with channels-last 4-D outputs: NHWC patch embeddings, and every module
    but convolutions in NHWC models (Swin)."""
    nhwc_model = str(getattr(model, "output_fmt", "")).endswith("NHWC")
    return frozenset(id(m) for m in model.modules()
                     if str(getattr(m, "output_fmt", "")).endswith("NHWC")
                     or (nhwc_model and m is not model and not isinstance(m, nn.Conv2d)))


def load(name: str, weights: str | None, device: torch.device, architecture_only: bool = False):
    """A Target for timm model `name` (see the module docstring)."""
    from .zoo import RANDOM_SEED, RGBThen, _finish, _is_random, _random_model

    check_name(name)
    weights = (weights or "").strip()
    if architecture_only or _is_random(weights):
        model = _random_model(lambda: _create(name, pretrained=False))
        model_id, sha, weights_name = f"{PREFIX}:{name}:random-init:{RANDOM_SEED}", f"random-init:{RANDOM_SEED}", "none"
    elif weights and Path(weights).expanduser().is_file():
        path = Path(weights).expanduser()
        model = _random_model(lambda: _create(name, pretrained=False))
        apply_state_dict(model, load_state_dict_file(path), path.name)
        model_id, sha, weights_name = f"{PREFIX}:{name}:file", sha256_file(path), path.name
    elif weights:
        raise ValueError(f"timm:{name} takes its pretrained weights (leave weights empty; choose a tag with "
                         f"timm:{name.split('.')[0]}.TAG), 'none' for random weights, or a checkpoint file; "
                         f"got {weights!r}")
    else:
        cfg = dict(_create(name, pretrained=False).pretrained_cfg)
        path = pretrained_file(name, cfg)
        revision, sha = hub_file_identity(path)
        model = _create(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        model_id, weights_name = f"{PREFIX}:{name}:{cfg.get('hf_hub_id', '')}@{revision}", "pretrained"
    timm = _timm()
    data_cfg = timm.data.resolve_data_config({}, model=model)
    preprocess = RGBThen(timm.data.create_transform(**data_cfg))
    target = _finish(f"{PREFIX}:{name}", model, preprocess, model_id, sha, weights_name, device)
    target.layout = token_layout(model)
    target.channels_last = channels_last(model)
    return target
