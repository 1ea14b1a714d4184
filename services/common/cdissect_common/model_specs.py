"""Target model strings: which family a `--model` names, and which local file or folder of the user's.

    resnet50, resnet18_places, shapes_cnn, resnet50:/p/ckpt.pth   the zoo (torchvision, plugins)
    /p/ckpt.pth                                                     refused: a checkpoint needs its architecture
    timm:NAME, timm:NAME.TAG, timm:NAME:/p/ckpt.safetensors         timm
    hf:ORG/NAME, hf:/p/folder                                       Hugging Face transformers
    clip:NAME, clip:/p/clip.pt, clip:open_clip:ARCH[:TAG|:/p/file]   a CLIP's image tower

The CLI uploads the file or folder a string names to the object store and sends its refs; the
activations service loads the copy it fetched by digest, never the client's path. Both sides
split the string here, the same way. Pure string work: no torch, no file system access.
"""
from __future__ import annotations

from dataclasses import dataclass

ZOO, TIMM, HF, CLIP = "zoo", "timm", "hf", "clip"
PREFIXES = (TIMM, HF, CLIP)
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".bin", ".ckpt", ".safetensors")
_PATH_STARTS = ("/", "./", "../", "~")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model string: `family` (zoo | timm | hf | clip), `name` without the prefix and
    without the user's path, and `path`: a local file or folder the user named ("" for none)."""

    family: str
    name: str
    path: str = ""
    weights: str = ""

    @property
    def is_folder(self) -> bool:
        """The path names a model folder (hf:/path) rather than a weight file."""
        return self.family == HF and bool(self.path)

    def model_string(self, local_path: str = "") -> str:
        """The model string with the user's path replaced by `local_path` (or dropped)."""
        path = local_path or ""
        if self.family == ZOO:
            return f"{self.name}:{path}" if path else self.name
        if self.family == HF or (self.family == CLIP and not self.name):
            return f"{self.family}:{path}" if path else f"{self.family}:{self.name}"
        return f"{self.family}:{self.name}" + (f":{path}" if path else "")


def looks_like_path(text: str) -> bool:
    """Whether `text` is meant as a file path, by its form alone (no file system access: a name
    is never looked up on disk): it starts with '/', '~', './' or '../', or has no ':' and ends
    with a checkpoint suffix. 'ViT-B/16', 'IMAGENET1K_V1' and 'org/name' are not paths. The one
    rule of the CLI and the services (zoo, CLIP backends, cdissect_common.userfiles)."""
    text = text.strip()
    return text.startswith(_PATH_STARTS) or (":" not in text and text.lower().endswith(CHECKPOINT_SUFFIXES))


def split_checkpoint(spec: str) -> tuple[str, str | None]:
    """Split a CLIP model string into (the name part, the file part or None).

    '/ckpt/clip.pt' -> ('', '/ckpt/clip.pt'); 'open_clip:ViT-B-32:/w.pt' -> ('open_clip:ViT-B-32', '/w.pt');
    'ViT-B/16' -> ('ViT-B/16', None). (Target strings: parse_model.)
    """
    spec = (spec or "").strip()
    for index, char in enumerate(spec):
        if char == ":" and looks_like_path(spec[index + 1:]):
            return spec[:index], spec[index + 1:].strip()
    if looks_like_path(spec):
        return "", spec
    return spec, None


def join_checkpoint(name: str, path: str) -> str:
    """The inverse of split_checkpoint: 'NAME:PATH', or PATH alone when there is no name."""
    return f"{name}:{path}" if name else str(path)


def parse_model(model: str, weights: str = "") -> ModelSpec:
    """Split a model string (see the module docstring). `weights` may carry the path instead.

    Raises ValueError for an empty name or a path given twice.
    """
    text = (model or "").strip()
    weights = (weights or "").strip()
    if not text:
        raise ValueError("empty model name; give one such as 'resnet50', 'timm:convnext_tiny' or 'hf:ORG/NAME'")
    prefix, sep, rest = text.partition(":")
    if not sep or prefix not in PREFIXES:
        arch, sep, path = text.partition(":")
        if not arch.strip() or looks_like_path(arch):
            raise ValueError(_no_architecture(path.strip() if sep else arch.strip()))
        return _with_weights(ModelSpec(ZOO, arch.strip(), path.strip() if sep else ""), weights, text)
    rest = rest.strip()
    if not rest:
        raise ValueError(f"{text!r} names the family {prefix!r} but no model; e.g. '{prefix}:NAME'")
    if prefix == HF:
        if looks_like_path(rest):
            return _with_weights(ModelSpec(HF, "", rest), weights, text)
        return ModelSpec(HF, rest, "", weights)
    if prefix == CLIP:
        if rest.startswith("open_clip:"):
            arch, _, tag = rest[len("open_clip:"):].partition(":")
            if looks_like_path(tag):
                return _with_weights(ModelSpec(CLIP, f"open_clip:{arch.strip()}", tag.strip()), weights, text)
        elif looks_like_path(rest):
            return _with_weights(ModelSpec(CLIP, "", rest), weights, text)
        return _with_weights(ModelSpec(CLIP, rest, ""), weights, text)
    name, sep, path = rest.partition(":")
    return _with_weights(ModelSpec(TIMM, name.strip(), path.strip() if sep else ""), weights, text)


def _no_architecture(path: str) -> str:
    """Why a bare checkpoint path is not a target model, and the form that is."""
    return (f"{path!r} is a checkpoint file without its architecture: a checkpoint holds the weights, not the "
            f"network, so name the architecture it was saved from, e.g. resnet50:{path} (or --model resnet50 "
            f"--weights {path}; `cdissect models` lists the architectures)")


def _with_weights(spec: ModelSpec, weights: str, text: str) -> ModelSpec:
    if spec.path and weights:
        raise ValueError(f"model {text!r} already names its weights ({spec.path!r}); do not also pass weights={weights!r}")
    if not spec.path and weights and looks_like_path(weights) and spec.family != HF:
        return ModelSpec(spec.family, spec.name, weights, "")
    return ModelSpec(spec.family, spec.name, spec.path, weights)
