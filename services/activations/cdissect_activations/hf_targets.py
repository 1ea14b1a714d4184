"""Hugging Face targets: `hf:ORG/NAME` (e.g. `hf:facebook/dinov2-small`) or a local model folder.

Built with transformers' Auto classes (AutoModelForImageClassification when the config names a
classifier, else AutoModel) and preprocessed with the folder's AutoImageProcessor.
- `hf:ORG/NAME`: read from the hub cache in our cache folder (`<cache_dir>/huggingface`), or
  downloaded there; offline without it: a DownloadError within seconds naming the folder.
  weights: "" / a revision (branch, tag or commit) for the hub's weights, "none" for random init
  from the config. The snapshot's commit is part of the model id, so a new revision changes
  every artifact key.
- a folder (save_pretrained layout: config.json, weights, preprocessor_config.json): the service
  passes the copy it assembled from the store by digest; the digest of its files is the
  checkpoint digest.
ViT-like models (DINOv2, with registers too) get their token layout for CLS / mean / patch_mean.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch
from PIL import Image

from cdissect_common.downloads import DownloadError, host_reachable, sha256_file
from cdissect_common.suggest import closest_hint

from .checkpoints import CheckpointError
from .pooling import TokenLayout
from .timm_targets import HUB_HOST, hub_cache, hub_file_identity

PREFIX = "hf"
SUBSET = ("facebook/dinov2-small", "facebook/dinov2-with-registers-small", "google/vit-base-patch16-224",
          "microsoft/resnet-50", "facebook/convnext-tiny-224")
CONFIG_FILES = ("config.json", "preprocessor_config.json")
_DISTILLATION_TYPES = ("deit",)  # a distillation token follows the CLS token


def _transformers():
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def list_names() -> list[str]:
    """`hf:ORG/NAME` for a sensible subset (any image model id of the hub works)."""
    return [f"{PREFIX}:{n}" for n in SUBSET]


def cached_repos() -> list[str]:
    """Model ids present in our hub cache (for 'closest names' hints)."""
    folder = hub_cache()
    if not folder.is_dir():
        return []
    return sorted(p.name[len("models--"):].replace("--", "/") for p in folder.glob("models--*"))


def _unknown(repo: str, why: str) -> LookupError:
    hint = closest_hint(repo, list(SUBSET) + cached_repos())
    return LookupError(f"Hugging Face model {repo!r} {why}.{hint} Give a model id of the hub (ORG/NAME) or a "
                       f"save_pretrained folder as hf:/path/to/folder.")


def hub_folder(repo: str, revision: str = "", config_only: bool = False) -> Path:
    """The snapshot folder of `repo` in our hub cache; downloaded when missing (fail fast offline).

    config_only: only the JSON configs are needed (layer listing), never the weights.
    """
    from huggingface_hub import snapshot_download

    if repo.count("/") != 1 or not all(repo.split("/")):
        raise _unknown(repo, "is not a model id of the form ORG/NAME")
    patterns = ["*.json"] if config_only else ["*.json", "*.safetensors", "*.bin", "*.txt"]
    folder = hub_cache()
    try:
        path = Path(snapshot_download(repo, revision=revision or None, cache_dir=str(folder),
                                      local_files_only=True, allow_patterns=patterns))
        if (path / "config.json").is_file() and (config_only or _has_weights(path)):
            return path
    except Exception:  # noqa: BLE001 - not (fully) in the cache: fetch it below
        pass
    fix = (f"Download it elsewhere (hf download {repo} --cache-dir DIR) and copy DIR's contents into {folder}, "
           f"or save it with save_pretrained and pass hf:/path/to/folder.")
    if not host_reachable(HUB_HOST):
        hint = closest_hint(repo, list(SUBSET) + cached_repos())
        raise DownloadError(f"Hugging Face model {repo} is not in {folder} and {HUB_HOST} cannot be reached "
                            f"(offline).{hint} {fix}", url=f"https://{HUB_HOST}/{repo}", dest=folder)
    try:
        return Path(snapshot_download(repo, revision=revision or None, cache_dir=str(folder), allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - hub errors differ by version
        if type(exc).__name__ in ("RepositoryNotFoundError", "RevisionNotFoundError"):
            raise _unknown(repo, f"does not exist on the hub ({type(exc).__name__})") from exc
        raise DownloadError(f"could not fetch Hugging Face model {repo} ({type(exc).__name__}: {exc}). {fix}",
                            url=f"https://{HUB_HOST}/{repo}", dest=folder) from exc


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))


def folder_digest(folder: Path) -> str:
    """sha256 over (relative path, content digest) of the folder's files; hub blobs by their names."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".sha256")):
        digest = hub_file_identity(f)[1] if f.is_symlink() else sha256_file(f, remember=False)
        h.update(f"{f.relative_to(folder).as_posix()} {digest}\n".encode())
    return h.hexdigest()


class HFPreprocess:
    """PIL image -> Tensor[3, H, W] through a transformers image processor (RGB first)."""

    def __init__(self, processor) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    def __repr__(self) -> str:
        return f"HFPreprocess({type(self.processor).__name__} {self.processor.to_json_string()})"


def _processor(folder: Path, config, architecture_only: bool):
    transformers = _transformers()
    if (folder / "preprocessor_config.json").is_file():
        return transformers.AutoImageProcessor.from_pretrained(str(folder))
    if not architecture_only:
        raise CheckpointError(f"the model folder has no preprocessor_config.json; save the image processor "
                              f"with it (processor.save_pretrained(folder)) so images are prepared as in training")
    size = int(getattr(config, "image_size", 224) or 224)  # layer listing only: shapes, not meaning
    return transformers.ViTImageProcessor(size={"height": size, "width": size})


def _model_class(config):
    transformers = _transformers()
    heads = [a for a in (getattr(config, "architectures", None) or []) if a.endswith("ForImageClassification")]
    return transformers.AutoModelForImageClassification if heads else transformers.AutoModel


def token_layout(config, image_hw: tuple[int, int]) -> TokenLayout:
    """CLS / register layout of a ViT-like config at the processed image size (others: default)."""
    patch = getattr(config, "patch_size", None)
    if not isinstance(patch, int) or hasattr(config, "hidden_sizes"):  # conv nets (ConvNeXt has a patch_size)
        return TokenLayout()
    registers = int(getattr(config, "num_register_tokens", 0) or 0)
    registers += int(getattr(config, "model_type", "") in _DISTILLATION_TYPES)
    patches = (image_hw[0] // patch) * (image_hw[1] // patch)
    return TokenLayout(cls=True, registers=registers, tokens=patches + 1 + registers)


def load(name: str, path: str, weights: str | None, device: torch.device, architecture_only: bool = False):
    """A Target for `hf:name` (a hub id) or the local folder `path` (see the module docstring)."""
    from .zoo import RANDOM_SEED, _finish, _is_random, _random_model

    transformers = _transformers()
    weights = (weights or "").strip()
    random = architecture_only or _is_random(weights)
    if path:
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"hf:{folder.name} is not a model folder: it has no config.json (save one with "
                                  f"model.save_pretrained(folder))")
        label, revision = f"{PREFIX}:folder", "local"
    else:
        folder = hub_folder(name, "" if random else weights, config_only=random)
        label, revision = f"{PREFIX}:{name}", folder.name
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder))
        cls = _model_class(config)
        if random:
            model = _random_model(lambda: cls.from_config(config))
            model_id, sha = f"{label}:random-init:{RANDOM_SEED}", f"random-init:{RANDOM_SEED}"
        else:
            model, info = cls.from_pretrained(str(folder), output_loading_info=True, ignore_mismatched_sizes=True)
            bad = sorted(info.get("missing_keys") or []) + sorted(info.get("mismatched_keys") or [])
            if bad:
                raise CheckpointError(f"the weights of {label} do not fit its config: {len(bad)} missing or "
                                      f"mismatched (e.g. {', '.join(map(str, bad[:4]))})")
            model_id, sha = f"{label}@{revision}", folder_digest(folder)
    except (OSError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{label} cannot be built by transformers' Auto classes: {exc}") from exc
    preprocess = HFPreprocess(_processor(folder, config, architecture_only))
    hw = tuple(preprocess(Image.new("RGB", (224, 224), (127, 127, 127))).shape[-2:])
    target = _finish(f"{PREFIX}:{name or folder.name}", model, preprocess, model_id, sha,
                     "none" if random else (weights or "main"), device)
    target.layout = token_layout(config, hw)
    return target

