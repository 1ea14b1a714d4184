"""Checkpoints the user names on the command line travel to the services through the store.

A target checkpoint (`--model resnet50:/path/ckpt.pth` or `--weights /path/ckpt.pth`) or a CLIP
checkpoint (`--clip-model /path/clip.pt`, `--clip-model open_clip:ViT-B-32:/path/w.pt`) that is a
file on this machine is uploaded under its sha256 (`cdissect_common.userfiles`, once per content)
and the request carries the reference; the model string keeps only the name part. A path that is
not a file here is sent as it is: a path on the service's machine, which a service accepts only
inside the model folders its operator configured (`model_dirs`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdissect.v1 import common_pb2
from cdissect_common.store import ObjectStore
from cdissect_common.userfiles import UserFileError, looks_like_path, split_checkpoint, upload_user_file
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from cdissect_cli.errors import CliError

PROGRESS_FROM_BYTES = 64 * 1024 * 1024  # show a progress bar for uploads at least this big


@dataclass(frozen=True)
class ModelArgs:
    """A model as a request carries it: the name part, weights, and the uploaded checkpoint."""

    model: str
    weights: str = ""
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


def upload(store: ObjectStore, path: Path, console: Console | None = None) -> common_pb2.ArtifactRef:
    """Upload one local file (idempotent), with a progress bar when it is big; clear errors."""
    console = console or Console(stderr=True)
    size = path.stat().st_size
    try:
        if size < PROGRESS_FROM_BYTES:
            return upload_user_file(store, path)
        with Progress(TextColumn("uploading {task.description}"), BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), console=console, transient=True) as bar:
            task = bar.add_task(path.name, total=size)
            return upload_user_file(store, path, lambda done, _total: bar.update(task, completed=done))
    except (UserFileError, OSError) as err:
        raise CliError(f"cannot upload {path} to the store {store.url}: {err}", exit_code=2) from err


def _local_file(path_text: str, console: Console | None) -> Path | None:
    """The local file `path_text` names, or None (then it is a server path; say so)."""
    local = Path(path_text).expanduser()
    if local.is_file():
        return local
    if local.exists():
        raise CliError(f"{local} is not a file; give the checkpoint file itself", exit_code=2)
    (console or Console(stderr=True)).print(
        f"note: {path_text} is not a file on this machine; it is sent as a path on the service's machine, "
        f"which works only inside the service's model folders (model_dirs)", style="yellow", markup=False)
    return None


def target_args(store: ObjectStore, model: str, weights: str, console: Console | None = None) -> ModelArgs:
    """The target model of a request; a local checkpoint is uploaded (see the module docstring)."""
    arch, path = split_checkpoint(model)
    if path is not None and weights:
        raise CliError(f"--model {model!r} already names a checkpoint file; drop --weights {weights!r}", exit_code=2)
    if path is None and weights and looks_like_path(weights):
        arch, path = model, weights
    if path is None:
        return ModelArgs(model, weights)
    if not arch:
        raise CliError(f"--model {model!r} gives a checkpoint but no architecture; name it, e.g. "
                       f"--model resnet50:{path} (see `cdissect models`)", exit_code=2)
    local = _local_file(path, console)
    if local is None:
        return ModelArgs(model, weights)
    return ModelArgs(arch, "", upload(store, local, console))


def clip_args(store: ObjectStore, clip_model: str, console: Console | None = None) -> ModelArgs:
    """The CLIP model of a request; a local checkpoint is uploaded (see the module docstring)."""
    name, path = split_checkpoint(clip_model)
    if path is None:
        return ModelArgs(clip_model)
    local = _local_file(path, console)
    if local is None:
        return ModelArgs(clip_model)
    return ModelArgs(name, "", upload(store, local, console))
