"""The user's own files a job names, sent to the services through the store by digest.

A `resnet50:/path/ckpt.pth` (or `--weights /path/ckpt.pth`), `timm:NAME:/path/ckpt.safetensors`,
`hf:/path/to/folder` or `clip:/path/clip.pt` target, an `sae:/path/sae.safetensors` feature and
a `--clip-model /path/clip.pt` (or `open_clip:ARCH:/path/w.pt`) name local files. The services
never open a path a client names: the CLI uploads each file under its sha256
(`cdissect_common.userfiles`: chunked, idempotent, an unchanged file is not sent again) and puts
the refs in the request (`UserFile`, `Features`, the embedder's `model_file`). A target or CLIP
path that is not a file or folder on this machine is sent as it is: a path on the service's
machine, which a service accepts only inside its operator's model folders (`model_dirs`).

Feature strings: `sae:PATH` with an optional activation suffix `:relu`, `:jumprelu` or
`:topk=K`. Without one, a SAELens `cfg.json` next to the file names it (`activation_fn_str`,
`activation_fn_kwargs.k`); else the service reads the file's metadata (JumpReLU when it has a
threshold, ReLU otherwise).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdissect.v1 import activations_pb2, common_pb2
from cdissect_common import model_specs, userfiles
from cdissect_common.checkpoint_format import CheckpointFormatError, check_checkpoint_file
from cdissect_common.store import ObjectStore
from cdissect_common.vocabulary import SAE_ACTIVATIONS
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from cdissect_cli.errors import InputError, SpecError

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


PROGRESS_FROM_BYTES = 64 * 1024 * 1024  # show a progress bar for uploads at least this big


def upload_user_file(store: ObjectStore, path: Path, console: Console | None = None) -> common_pb2.ArtifactRef:
    """The ref of `path` in the store (cdissect_common.userfiles: uploaded by sha256 unless already
    there), with a progress bar when the file is big; a file that cannot be read is an InputError (a
    store that fails raises its own StoreError: exit 1)."""
    size = path.stat().st_size
    try:
        if size < PROGRESS_FROM_BYTES:
            return userfiles.upload_user_file(store, path)
        with Progress(TextColumn("uploading {task.description}"), BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), console=console or Console(stderr=True), transient=True) as bar:
            task = bar.add_task(path.name, total=size)
            return userfiles.upload_user_file(store, path, lambda done, _total: bar.update(task, completed=done))
    except (userfiles.UserFileError, OSError) as err:
        raise InputError(f"cannot upload {path} to the store {store.url}: {err}") from err


def _server_path_note(path_text: str, console: Console | None) -> None:
    (console or Console(stderr=True)).print(
        f"note: {path_text} is not on this machine; it is sent as a path on the service's machine, which works "
        f"only inside the service's model folders (model_dirs)", style="yellow", markup=False, soft_wrap=True)


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
                console: Console | None = None) -> tuple[str, list]:
    """(model string to send, UserFiles) for a target naming a local file or folder.

    The model string is sent unchanged (the service replaces the path by its own copy); a target
    without a path sends no files, and one whose path is not on this machine sends none either
    (a server path, see the module docstring). configs_only: of a folder, only its JSON configs
    (layer listing builds the architecture from them); a checkpoint file is then not needed at all.
    """
    try:
        spec = model_specs.parse_model(model, weights)
    except ValueError as err:
        raise SpecError(str(err)) from err
    if not spec.path:
        return model, []
    local = Path(spec.path).expanduser()
    if not local.exists():
        _server_path_note(spec.path, console)
        return model, []
    if spec.is_folder:
        folder = _existing(spec.path, "Hugging Face model folder", folder=True)
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        if configs_only:
            files = [p for p in files if p.suffix == ".json"]
        if not files:
            raise InputError(f"model folder {folder} has no files")
        return model, [activations_pb2.UserFile(name=p.relative_to(folder).as_posix(),
                                                ref=upload_user_file(store, p, console)) for p in files]
    if configs_only and spec.family in (model_specs.TIMM, model_specs.ZOO):
        return spec.model_string(), []
    path = _checkpoint_file(spec.path, "checkpoint")
    return model, [activations_pb2.UserFile(name=path.name, ref=upload_user_file(store, path, console))]


@dataclass(frozen=True)
class ModelArgs:
    """A CLIP model as an embedder request carries it: the name part and the uploaded checkpoint."""

    model: str
    file: common_pb2.ArtifactRef | None = None

    def file_record(self) -> dict[str, str] | None:
        """What results.json records of the uploaded file (None when there is none)."""
        if self.file is None:
            return None
        return {"key": self.file.key, "sha256": self.file.sha256, "name": self.file.producer.get("name", ""),
                "file_sha256": self.file.producer.get("file_sha256", "")}


def file_ref(record: dict[str, Any] | None) -> common_pb2.ArtifactRef | None:
    """The ArtifactRef of an uploaded file recorded in results.json (see ModelArgs.file_record)."""
    if not record:
        return None
    return common_pb2.ArtifactRef(key=str(record["key"]), sha256=str(record["sha256"]))


def clip_args(store: ObjectStore, clip_model: str, console: Console | None = None) -> ModelArgs:
    """The CLIP model of an embedder request; a local checkpoint is uploaded (module docstring)."""
    name, path = model_specs.split_checkpoint(clip_model)
    if path is None:
        return ModelArgs(clip_model)
    local = Path(path).expanduser()
    if not local.exists():
        _server_path_note(path, console)
        return ModelArgs(clip_model)
    return ModelArgs(name, upload_user_file(store, _checkpoint_file(path, "CLIP checkpoint"), console))


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
