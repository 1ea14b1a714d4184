"""The user's own files a job names, sent to the services through the store by digest.

A `timm:NAME:/path/ckpt.safetensors`, `hf:/path/to/folder` or `clip:/path/clip.pt` target and
an `sae:/path/sae.safetensors` feature name local files. The services never open a path a
client names: the CLI uploads each file under its sha256 (idempotent: an unchanged file is not
sent again) and puts the refs in the request (`UserFile`, `Features`).

Feature strings: `sae:PATH` with an optional activation suffix `:relu`, `:jumprelu` or
`:topk=K`. Without one, a SAELens `cfg.json` next to the file names it (`activation_fn_str`,
`activation_fn_kwargs.k`); else the service reads the file's metadata (JumpReLU when it has a
threshold, ReLU otherwise).

Interim: the shared upload (cdissect_common.userfiles) is being built on another branch; the
upload here goes away in its favour.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from cdissect.v1 import activations_pb2
from cdissect_common import model_specs
from cdissect_common.checkpoint_format import CheckpointFormatError, check_checkpoint_file
from cdissect_common.downloads import sha256_file
from cdissect_common.store import ObjectStore
from cdissect_common.vocabulary import SAE_ACTIVATIONS

from cdissect_cli.errors import InputError, SpecError

USER_FILES_PREFIX = "userfiles"
_ACTIVATION = re.compile(r":(" + "|".join(a for a in SAE_ACTIVATIONS if a != "topk") + r"|topk=(\d+))$")


@dataclass(frozen=True)
class FeatureSpec:
    """A parsed `--features` string."""

    kind: str
    path: str
    activation: str = ""
    k: int = 0


def parse_features(text: str) -> FeatureSpec:
    """`sae:PATH[:relu|:jumprelu|:topk=K]` -> FeatureSpec; SpecError naming the form otherwise."""
    kind, sep, rest = (text or "").strip().partition(":")
    if kind != "sae" or not sep or not rest.strip():
        raise SpecError(f"features {text!r} are not supported; give sae:/path/to/sae.safetensors (optionally "
                        f"ending in :relu, :jumprelu or :topk=K)")
    rest = rest.strip()
    match = _ACTIVATION.search(rest)
    if match is None:
        return FeatureSpec("sae", rest)
    k = int(match.group(2)) if match.group(2) else 0
    return FeatureSpec("sae", rest[:match.start()], "topk" if k else match.group(1), k)


def upload_user_file(store: ObjectStore, path: Path):
    """The ArtifactRef of `path` in the store, uploaded under its sha256 unless already there."""
    digest = sha256_file(path, remember=False)  # no sidecar next to the user's file
    key = f"{USER_FILES_PREFIX}/{digest}"
    if store.exists(key):
        return store.ref(key)
    return store.put(key, path.read_bytes(), {"kind": "user-file"})


def _existing(path_text: str, what: str, folder: bool = False) -> Path:
    path = Path(path_text).expanduser()
    ok = path.is_dir() if folder else path.is_file()
    if not ok:
        kind = "folder" if folder else "file"
        raise InputError(f"{what} {path} is not a {kind}; check the path")
    return path


def _checkpoint_file(path_text: str, what: str) -> Path:
    """An existing local file in a checkpoint format (cdissect_common.checkpoint_format), checked
    from its first bytes before anything is sent; an InputError naming the user's file otherwise."""
    path = _existing(path_text, what)
    try:
        check_checkpoint_file(path)
    except CheckpointFormatError as err:
        raise InputError(str(err)) from None
    return path


def model_files(store: ObjectStore, model: str, weights: str = "", configs_only: bool = False,
                ) -> tuple[str, list]:
    """(model string to send, UserFiles) for a target naming a local file or folder.

    The model string is sent unchanged (the service replaces the path by its own copy); a target
    without a path sends no files. configs_only: of a folder, only its JSON configs (layer
    listing builds the architecture from them); a timm checkpoint is then not needed at all.
    """
    try:
        spec = model_specs.parse_model(model, weights)
    except ValueError as err:
        raise SpecError(str(err)) from err
    if spec.family == model_specs.ZOO and spec.path and Path(spec.path).expanduser().is_file():
        _checkpoint_file(spec.path, "checkpoint")      # a local file: checked here (it is sent as its path)
    if spec.family == model_specs.ZOO or not spec.path:
        return model, []
    if spec.is_folder:
        folder = _existing(spec.path, "Hugging Face model folder", folder=True)
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        if configs_only:
            files = [p for p in files if p.suffix == ".json"]
        if not files:
            raise InputError(f"model folder {folder} has no files")
        return model, [activations_pb2.UserFile(name=p.relative_to(folder).as_posix(),
                                                ref=upload_user_file(store, p)) for p in files]
    if configs_only and spec.family == model_specs.TIMM:
        return spec.model_string(), []
    path = _checkpoint_file(spec.path, "checkpoint")
    return model, [activations_pb2.UserFile(name=path.name, ref=upload_user_file(store, path))]


def _saelens_activation(path: Path) -> tuple[str, int]:
    """Activation and k from a SAELens cfg.json next to the file, if there is one."""
    cfg_path = path.with_name("cfg.json")
    if not cfg_path.is_file():
        return "", 0
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError):
        return "", 0
    name = str(cfg.get("activation_fn_str") or cfg.get("architecture") or "").lower()
    k = (cfg.get("activation_fn_kwargs") or {}).get("k", 0)
    name = {"standard": "relu"}.get(name, name)
    return (name, int(k)) if name in SAE_ACTIVATIONS else ("", 0)


def features_message(store: ObjectStore, features: str, layer: str):
    """The `Features` of a request for a `--features` string on `layer` (uploading the SAE file)."""
    spec = parse_features(features)
    path = _checkpoint_file(spec.path, "SAE file")
    activation, k = (spec.activation, spec.k) if spec.activation else _saelens_activation(path)
    return activations_pb2.Features(kind=spec.kind, layer=layer, activation=activation, k=k,
                                    file=activations_pb2.UserFile(name=path.name, ref=upload_user_file(store, path)))
