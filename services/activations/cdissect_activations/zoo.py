"""The target-model zoo: vision networks addressed by name, with their weights and preprocessing.

Modelled on torchvision's registry (`list_models`, `get_model_weights`, `weights.transforms()`):
every torchvision classification model is a target, plus `resnet18_places` (the Places365
ResNet-18 the reference dissects) and plugins registered in the `cdissect.targets` entry-point
group (the shapes world's `shapes_cnn`). A model string may carry its own checkpoint:
`resnet50:/path/ckpt.pth`. Three families have a prefix and a module of their own:
`timm:NAME` (timm_targets.py), `hf:ORG/NAME` or `hf:/folder` (hf_targets.py) and `clip:NAME`,
a CLIP's image tower (clip_targets.py); `cdissect_common.model_specs` splits the strings.

`architecture_only=True` builds any target without its weights (random init, nothing
downloaded): what `cdissect layers` needs for layer names and shapes.

Weights (the `weights` argument):
- "" or None: the reference's choice: IMAGENET1K_V1 for resnets and vit_b, torchvision's
  DEFAULT for other models, the Places365 checkpoint for resnet18_places;
- a torchvision enum name (IMAGENET1K_V2, DEFAULT, ...);
- "none": random weights from a fixed seed, identical in every process (services in different
  processes must see the same model);
- a path: a user's checkpoint, read safely (see checkpoints.py).

Layer resolution lives in layers.py and is re-exported here (`list_layers`, `resolve_layer`).
"""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision import transforms as T

from cdissect_common import model_specs
from cdissect_common.devices import resolve_device
from cdissect_common.downloads import cache_dir, fetch, sha256_file
from cdissect_common.model_specs import looks_like_path
from cdissect_common.suggest import closest_hint

from .checkpoints import apply_state_dict, load_state_dict_file, read_checkpoint, strip_prefix, unwrap_state_dict
from .hooks import LayerRecorder
from .layers import LayerInfo, UnknownLayerError, list_layers, resolve_layer
from .pooling import DEFAULT_LAYOUT, TokenLayout

__all__ = [
    "Target", "UnknownModelError", "available_models", "load_target", "parse_model_spec",
    "resolve_device", "list_layers", "resolve_layer", "LayerInfo", "UnknownLayerError",
    "PLACES365_URL", "RANDOM_SEED", "ENTRY_POINT_GROUP",
]

ENTRY_POINT_GROUP = "cdissect.targets"
PLACES_NAME = "resnet18_places"
PLACES365_URL = "http://places2.csail.mit.edu/models_places365/resnet18_places365.pth.tar"
PLACES365_CLASSES = 365
RANDOM_SEED = 0
RANDOM_WORDS = ("none", "random")
REFERENCE_WEIGHTS = "IMAGENET1K_V1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")


class UnknownModelError(LookupError, ValueError):
    """A model name that is neither a torchvision model, resnet18_places, nor a plugin."""


@dataclass
class Target:
    """A loaded target network and everything that identifies it in artifacts.

    model: in eval mode, on `device`, gradients off. preprocess: PIL image -> Tensor[3, H, W].
    model_id: a stable string naming architecture and weights (part of cache keys).
    checkpoint_sha256: sha256 of the weight file; "random-init:<seed>" for random weights; for
    plugins, the sha256 of the state dict's tensors (name, dtype, shape, bytes in key order).
    layout: where CLS and register tokens sit; seq_first / channels_last: ids of modules whose
    outputs are [T, B, D] / [B, H, W, C] (beyond the torchvision Permute rule of layers.py).
    """

    name: str
    model: nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    model_id: str
    checkpoint_sha256: str
    weights_name: str
    device: torch.device
    layout: TokenLayout = DEFAULT_LAYOUT
    seq_first: frozenset[int] = frozenset()
    channels_last: frozenset[int] = frozenset()

    def recorder(self, layers: list[str], pooling: str = "avg", token_pooling: str = "cls",
                 features: dict | None = None) -> LayerRecorder:
        """Hooks on `layers` of this model that know its token layout and output layouts."""
        return LayerRecorder(self.model, layers, pooling, token_pooling, model_name=self.name, layout=self.layout,
                             seq_first=self.seq_first, channels_last=self.channels_last, features=features)


class RGBThen:
    """Convert a PIL image to RGB, then apply `transform` (grey or RGBA probe images happen)."""

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.transform = transform

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if not isinstance(image, Image.Image):
            raise TypeError(f"preprocess expects a PIL.Image, got {type(image).__name__}")
        return self.transform(image.convert("RGB"))

    def __repr__(self) -> str:
        return f"RGBThen({self.transform!r})"


def imagenet_preprocess(resize: int = 256, crop: int = 224) -> RGBThen:
    """Resize(256) -> CenterCrop(224) -> ImageNet mean/std: the reference's Places365 transform,
    also used for random-weight models."""
    return RGBThen(T.Compose([T.Resize(resize), T.CenterCrop(crop), T.ToTensor(),
                              T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]))




def _torchvision_models() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _plugins() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_models(every: bool = False) -> list[str]:
    """Target names: torchvision classification models, resnet18_places, plugins, then a sensible
    subset of timm, Hugging Face and CLIP targets (every=True: all timm and open_clip names)."""
    from . import clip_targets, hf_targets, timm_targets

    builtin = _torchvision_models() + [PLACES_NAME]
    plugins = sorted(n for n in _plugins() if n not in builtin)
    return builtin + plugins + timm_targets.list_names(every) + hf_targets.list_names() + clip_targets.list_names(every)


def parse_model_spec(name: str, weights: str | None = None) -> tuple[str, str | None]:
    """Split a model string 'arch:/path/ckpt.pth' into (arch, weights); plain names pass through.

    Giving a path in both the name and `weights` is ambiguous and raises ValueError.
    """
    name = (name or "").strip()
    if not name:
        raise ValueError("empty model name; give one such as 'resnet50' (see available_models())")
    arch, sep, rest = name.partition(":")
    if sep and rest:
        if weights not in (None, ""):
            raise ValueError(f"model {name!r} already names its weights ({rest!r}); do not also pass weights={weights!r}")
        return arch.strip(), rest.strip()
    return name, (weights.strip() if isinstance(weights, str) else weights)


def _unknown_model(name: str) -> UnknownModelError:
    names = _torchvision_models() + [PLACES_NAME] + sorted(_plugins())
    hint = closest_hint(name, names)
    return UnknownModelError(
        f"unknown target model {name!r}.{hint} There are {len(names)} targets: the torchvision "
        f"classification models, {PLACES_NAME}, and plugins of the '{ENTRY_POINT_GROUP}' entry-point "
        f"group (`cdissect models` lists them), or a prefixed name: timm:NAME, hf:ORG/NAME, clip:NAME."
    )


def _is_random(weights: str | None) -> bool:
    return isinstance(weights, str) and weights.lower() in RANDOM_WORDS


def _random_model(build: Callable[[], nn.Module], seed: int = RANDOM_SEED) -> nn.Module:
    """Build with torch's CPU generator seeded, leaving the caller's RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _finish(name: str, model: nn.Module, preprocess: Callable, model_id: str, sha: str,
            weights_name: str, device: torch.device) -> Target:
    model = model.eval().requires_grad_(False).to(device)
    return Target(name=name, model=model, preprocess=preprocess, model_id=model_id,
                  checkpoint_sha256=sha, weights_name=weights_name, device=device)


# --- torchvision models --------------------------------------------------------------------

def _reference_weights_name(arch: str) -> str:
    """The reference loads IMAGENET1K_V1 for resnets and vit_b; otherwise take torchvision's DEFAULT."""
    return REFERENCE_WEIGHTS if ("resnet" in arch or "vit_b" in arch) else "DEFAULT"


def _weights_enum(arch: str, weights_name: str):
    enum_cls = torchvision.models.get_model_weights(arch)
    members = list(enum_cls.__members__)
    if weights_name not in enum_cls.__members__:
        raise ValueError(
            f"{arch} has no weights {weights_name!r}; choose one of {', '.join(members)}, "
            f"'none' (random weights) or a checkpoint path"
        )
    return enum_cls[weights_name]


def _builder_kwargs(arch: str, enum) -> dict:
    """Constructor arguments torchvision's own builders set when they load `enum`."""
    kwargs: dict = {}
    categories = enum.meta.get("categories")
    if categories:
        kwargs["num_classes"] = len(categories)
    if arch.startswith("vit_"):
        kwargs["image_size"] = enum.meta["min_size"][0]
    if arch == "maxvit_t":
        kwargs["input_size"] = enum.meta["min_size"]
    if arch in ("googlenet", "inception_v3"):
        kwargs.update(transform_input=True, aux_logits=True, init_weights=False)
    return kwargs


def _drop_aux_heads(arch: str, model: nn.Module) -> None:
    """torchvision removes the auxiliary classifiers after loading pretrained googlenet/inception."""
    if arch == "googlenet":
        model.aux_logits = False
        model.aux1 = None
        model.aux2 = None
    elif arch == "inception_v3":
        model.aux_logits = False
        model.AuxLogits = None


def torchvision_weights_path(enum) -> Path:
    """Where a torchvision weights file lives in our cache (and where to copy it by hand)."""
    return cache_dir() / "torchvision" / os.path.basename(enum.url)


def _load_torchvision(arch: str, weights: str | None, device: torch.device, architecture_only: bool = False) -> Target:
    if architecture_only and not _is_random(weights) and _has_weights(arch):
        named = weights if weights and not looks_like_path(weights) else _reference_weights_name(arch)
        enum = _weights_enum(arch, named)
        model = _random_model(lambda: torchvision.models.get_model(arch, weights=None, **_builder_kwargs(arch, enum)))
        _drop_aux_heads(arch, model)
        return _finish(arch, model, RGBThen(enum.transforms()), f"torchvision:{arch}:{enum.name}:architecture",
                       f"random-init:{RANDOM_SEED}", "none", device)
    if _is_random(weights) or architecture_only:
        model = _random_model(lambda: torchvision.models.get_model(arch, weights=None))
        return _finish(arch, model, imagenet_preprocess(), f"torchvision:{arch}:random-init:{RANDOM_SEED}",
                       f"random-init:{RANDOM_SEED}", "none", device)
    if weights and looks_like_path(weights):
        path = Path(weights).expanduser()
        ref = _weights_enum(arch, _reference_weights_name(arch)) if _has_weights(arch) else None
        model = _random_model(lambda: torchvision.models.get_model(arch, weights=None))
        apply_state_dict(model, load_state_dict_file(path), str(path))
        preprocess = RGBThen(ref.transforms()) if ref is not None else imagenet_preprocess()
        return _finish(arch, model, preprocess, f"torchvision:{arch}:file:{path.name}",
                       sha256_file(path), str(path), device)
    enum = _weights_enum(arch, weights or _reference_weights_name(arch))
    path = fetch(enum.url, torchvision_weights_path(enum), expected_sha256_prefix=_expected_prefix(enum.url))
    model = _random_model(lambda: torchvision.models.get_model(arch, weights=None, **_builder_kwargs(arch, enum)))
    state = unwrap_state_dict(read_checkpoint(path), source=str(path))
    apply_state_dict(model, state, str(path))
    _drop_aux_heads(arch, model)
    return _finish(arch, model, RGBThen(enum.transforms()), f"torchvision:{arch}:{enum.name}",
                   sha256_file(path), enum.name, device)


def _has_weights(arch: str) -> bool:
    try:
        return bool(list(torchvision.models.get_model_weights(arch)))
    except (ValueError, KeyError):
        return False


def _expected_prefix(url: str) -> str | None:
    match = _HASH_IN_NAME.search(os.path.basename(url))
    return match.group(1) if match else None


# --- resnet18_places ------------------------------------------------------------------------

def places365_checkpoint_path() -> Path:
    """Where the Places365 ResNet-18 checkpoint lives in our cache (and where to copy it by hand)."""
    return cache_dir() / "places365" / os.path.basename(PLACES365_URL)


def load_places365_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The Places365 release format: {'epoch', 'arch', 'state_dict': {'module.conv1.weight': …}}.

    As the reference, keys are kept only when they start with `module.`, which is stripped.
    """
    state = strip_prefix(unwrap_state_dict(read_checkpoint(path), source=str(path)), drop_unprefixed=True)
    if not state:
        raise ValueError(f"{path} has no 'module.'-prefixed weights; it is not in the Places365 release format")
    return state


def _load_places(weights: str | None, device: torch.device, architecture_only: bool = False) -> Target:
    build = lambda: torchvision.models.resnet18(num_classes=PLACES365_CLASSES)  # noqa: E731
    preprocess = imagenet_preprocess()
    if _is_random(weights) or architecture_only:
        return _finish(PLACES_NAME, _random_model(build), preprocess,
                       f"{PLACES_NAME}:random-init:{RANDOM_SEED}", f"random-init:{RANDOM_SEED}", "none", device)
    if weights and looks_like_path(weights):
        path, weights_name = Path(weights).expanduser(), str(weights)
        model_id = f"{PLACES_NAME}:file:{path.name}"
    elif weights in (None, "", "places365", "DEFAULT"):
        path, weights_name = fetch(PLACES365_URL, places365_checkpoint_path()), "places365"
        model_id = f"{PLACES_NAME}:places365"
    else:
        raise ValueError(f"{PLACES_NAME} has weights 'places365' (default), 'none', or a checkpoint path; got {weights!r}")
    model = _random_model(build)
    apply_state_dict(model, load_places365_state_dict(path), str(path))
    return _finish(PLACES_NAME, model, preprocess, model_id, sha256_file(path), weights_name, device)


# --- plugins --------------------------------------------------------------------------------

def state_dict_sha256(model: nn.Module) -> str:
    """sha256 over a model's state dict (key, dtype, shape, bytes): identifies plugin weights."""
    h = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _load_plugin(name: str, ep, weights: str | None, device: torch.device) -> Target:
    loader = ep.load()
    result = loader(weights or None)
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], nn.Module) and callable(result[1])):
        raise TypeError(
            f"plugin target {name!r} ({ep.value}) must return (torch.nn.Module, preprocess); got {type(result).__name__}"
        )
    model, preprocess = result
    model = model.eval()
    return _finish(name, model, preprocess, f"plugin:{name}:{weights or 'default'}",
                   state_dict_sha256(model), weights or "default", device)


def load_target(name: str, weights: str | None = None, device: str | torch.device = "cpu",
                architecture_only: bool = False) -> Target:
    """Load the target network `name` with `weights` (see the module docstring) onto `device`.

    architecture_only: random weights whatever `weights` says, nothing downloaded (layer listing).
    """
    spec = model_specs.parse_model(name, weights or "")
    dev = resolve_device(device)
    if spec.family == model_specs.TIMM:
        from . import timm_targets

        return timm_targets.load(spec.name, spec.path or spec.weights, dev, architecture_only)
    if spec.family == model_specs.HF:
        from . import hf_targets

        return hf_targets.load(spec.name, spec.path, spec.weights, dev, architecture_only)
    if spec.family == model_specs.CLIP:
        from . import clip_targets

        return clip_targets.load(spec.name, spec.path, dev, architecture_only)
    arch, weights = parse_model_spec(name, weights)
    if arch == PLACES_NAME:
        return _load_places(weights, dev, architecture_only)
    if arch in _torchvision_models():
        return _load_torchvision(arch, weights, dev, architecture_only)
    plugins = _plugins()
    if arch in plugins:
        return _load_plugin(arch, plugins[arch], weights, dev)
    raise _unknown_model(arch)
