"""A file that is not a checkpoint is refused by name, saying what a checkpoint is.

Before, a text file passed as weights (`resnet18:/path/notes.pth`) failed inside torch.load with
a bare KeyError/IndexError (the service answered INTERNAL), an empty file with EOFError, and
random bytes were called "Python objects other than tensors". Now the first bytes decide the
format (cdissect_common.checkpoint_format, torch-free so the CLI can check a file before sending
it) and the service's reader refuses anything else with a CheckpointError (INVALID_ARGUMENT).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from cdissect_activations.checkpoints import CheckpointError, read_checkpoint
from cdissect_activations.zoo import load_target
from cdissect_common.checkpoint_format import CheckpointFormatError, checkpoint_format, check_checkpoint_file

EXPECTED = "expected a PyTorch checkpoint (torch.save: a zip archive or a pickle) or a safetensors file"


def _junk(tmp_path: Path) -> dict[str, Path]:
    files = {
        "text": b"hello world, these are my notes\n",
        "random": bytes(range(7, 256)) * 20,
        "empty": b"",
        "json": b'{"weights": [1, 2, 3]}\n',
        "short": b"\x80",
    }
    out = {}
    for name, data in files.items():
        out[name] = tmp_path / f"{name}.pth"
        out[name].write_bytes(data)
    out["not_safetensors"] = tmp_path / "x.safetensors"
    out["not_safetensors"].write_bytes(b"this is not a safetensors file at all")
    return out


@pytest.mark.parametrize("kind", ["text", "random", "empty", "json", "short", "not_safetensors"])
def test_a_file_that_is_not_a_checkpoint_is_named_with_what_was_expected(tmp_path: Path, kind: str) -> None:
    path = _junk(tmp_path)[kind]
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and EXPECTED in message and "torch.save(model.state_dict()" in message
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        load_target(f"resnet18:{path}")


def test_the_reason_describes_what_the_file_holds(tmp_path: Path) -> None:
    files = _junk(tmp_path)
    assert "it is empty" in _reason(files["empty"])
    assert "starts with text: 'hello world, these are my notes'" in _reason(files["text"])
    assert "starts with the bytes 07 08 09 0a" in _reason(files["random"])


def _reason(path: Path) -> str:
    with pytest.raises(CheckpointFormatError) as info:
        check_checkpoint_file(path)
    return str(info.value)


def test_real_checkpoints_of_every_format_are_recognised_and_read(tmp_path: Path) -> None:
    state = torchvision.models.resnet18().state_dict()
    saved = {"zip": tmp_path / "new.pth", "pickle": tmp_path / "legacy.pth", "safetensors": tmp_path / "w.safetensors"}
    torch.save(state, saved["zip"])
    torch.save(state, saved["pickle"], _use_new_zipfile_serialization=False)
    save_file({k: v.contiguous() for k, v in state.items()}, saved["safetensors"])
    renamed = tmp_path / "safetensors_named.bin"                # the format decides, not the suffix
    os.link(saved["safetensors"], renamed)
    for kind, path in [*saved.items(), ("safetensors", renamed)]:
        assert check_checkpoint_file(path) == kind
        assert set(read_checkpoint(path)) == set(state), kind
    assert checkpoint_format(saved["zip"].read_bytes()[:512]) == "zip"


def test_a_truncated_checkpoint_is_a_checkpoint_error_not_an_internal_one(tmp_path: Path) -> None:
    full = tmp_path / "full.pth"
    torch.save(torchvision.models.resnet18().state_dict(), full, _use_new_zipfile_serialization=False)
    for kind, cut in (("pickle", 4000), ("zip", 4000)):
        path = tmp_path / f"cut_{kind}.pth"
        if kind == "zip":
            torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "z.pth")
            path.write_bytes((tmp_path / "z.pth").read_bytes()[:cut])
        else:
            path.write_bytes(full.read_bytes()[:cut])
        with pytest.raises(CheckpointError, match=f"{path.name}.*cannot be read"):
            read_checkpoint(path)


def test_a_clip_file_that_is_not_a_checkpoint_is_named_the_same_way(tmp_path: Path) -> None:
    from cdissect_common.clip_checkpoints import load_openai_clip

    notes = _junk(tmp_path)["text"]
    with pytest.raises(ValueError) as info:
        load_openai_clip(str(notes), torch.device("cpu"))
    assert f"{notes} is not a checkpoint: {EXPECTED}, but it starts with text" in str(info.value)
