"""Which kind of checkpoint file a file is, from its first bytes (torch-free).

A checkpoint is one of the formats torch and safetensors write: ``torch.save`` since PyTorch 1.6
(and TorchScript) writes a zip archive, older ``torch.save`` a pickle (protocol 2 or later), the
oldest a tar archive, and safetensors an 8-byte header length followed by a JSON header. Anything
else (a text file, an image, an empty file) is refused here with a message that names the file,
says what it holds and what was expected, before torch parses it and fails with a bare
KeyError/IndexError. The CLI uses this to check a file before sending it; the activations
service's reader (`cdissect_activations.checkpoints`) uses it to pick the loader.
"""
from __future__ import annotations

import os
from pathlib import Path

HEAD_BYTES = 512
EXPECTED = "expected a PyTorch checkpoint (torch.save: a zip archive or a pickle) or a safetensors file"
SAVE_HINT = ("save the weights with torch.save(model.state_dict(), path) or "
             "safetensors.torch.save_file(model.state_dict(), path)")
_SAFETENSORS_MAX_HEADER = 100_000_000     # safetensors' own limit on the JSON header


class CheckpointFormatError(ValueError):
    """The file is not in any checkpoint format; the message names it and what it holds."""


def checkpoint_format(head: bytes) -> str | None:
    """'zip', 'pickle', 'tar' or 'safetensors' for the first bytes of a checkpoint file
    (at least HEAD_BYTES of them when the file is that long); None for anything else."""
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if head[257:262] == b"ustar":
        return "tar"
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= _SAFETENSORS_MAX_HEADER:
        return "safetensors"
    return None


def describe_head(head: bytes) -> str:
    """What the start of a file looks like, for a message: empty, text (its first line) or bytes."""
    if not head:
        return "it is empty"
    text = head.decode("utf-8", errors="ignore")
    if len(text) >= len(head) // 2 and all(c.isprintable() or c in "\t\r\n" for c in text):
        first = text.strip().splitlines()[0] if text.strip() else ""
        return f"it starts with text: {first[:60]!r}"
    return f"it starts with the bytes {head[:8].hex(' ')}"


def check_checkpoint_file(path: str | os.PathLike[str]) -> str:
    """The checkpoint format of the file at ``path`` (see ``checkpoint_format``).

    A file in no checkpoint format is a CheckpointFormatError naming it, what it holds, what was
    expected and how to save a checkpoint; a missing file is FileNotFoundError.
    """
    p = Path(path)
    with open(p, "rb") as handle:
        head = handle.read(HEAD_BYTES)
    kind = checkpoint_format(head)
    if kind is None:
        raise CheckpointFormatError(f"{p} is not a checkpoint: {EXPECTED}, but {describe_head(head)}; {SAVE_HINT}")
    return kind


__all__ = ["CheckpointFormatError", "EXPECTED", "SAVE_HINT", "check_checkpoint_file", "checkpoint_format",
           "describe_head"]
