"""The service's local copies of user files that travel through the store by digest.

A client never makes the service open a path it names: it uploads the file (a checkpoint, an
SAE, the files of a model folder) to the store and sends `UserFile`s (name + ArtifactRef). Here
each one is fetched once, its sha256 verified, and kept in the service's own cache folder under
its digest, under the name the user gave it (`<cache_dir>/userfiles/<sha256>/<name>`, so
messages name the user's file); a folder is assembled from such copies
under the digest of its (name, sha256) list. Later requests with the same digests reuse them.

Interim: the shared mechanism for this (cdissect_common.userfiles) is being built on another
branch; this module goes away in its favour.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from cdissect_common.downloads import cache_dir
from cdissect_common.store import ObjectStore

USER_FILES = "userfiles"
USER_FOLDERS = "userfolders"


class UserFileError(ValueError):
    """A user file reference that cannot be used (bad name, digest mismatch)."""


def _safe_name(name: str) -> PurePosixPath:
    rel = PurePosixPath(name)
    if not name or rel.is_absolute() or ".." in rel.parts or "\\" in name:
        raise UserFileError(f"user file name {name!r} must be a relative path inside its folder")
    return rel


def local_copy(store: ObjectStore, ref, name: str = "") -> Path:
    """The service-local copy of the stored user file `ref`, fetched and verified once."""
    if not ref.key or len(ref.sha256) != 64:
        raise UserFileError("a user file reference needs the object's key and sha256; upload the file first")
    base = PurePosixPath(name).name if name else "file"
    if base in ("", ".", ".."):
        raise UserFileError(f"user file name {name!r} has no file name")
    dest = cache_dir() / USER_FILES / ref.sha256 / base
    if dest.is_file():
        return dest
    data = store.get(ref.key, ref.sha256)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, dest)
    return dest


def local_folder(store: ObjectStore, files: Sequence) -> Path:
    """A service-local folder holding every `UserFile` (name = path inside the folder)."""
    names = [str(_safe_name(f.name)) for f in files]
    if len(set(names)) != len(names):
        raise UserFileError(f"a model folder lists a file twice: {sorted(names)}")
    digest = hashlib.sha256("".join(f"{n} {f.ref.sha256}\n" for n, f in sorted(zip(names, files),
                                                                                key=lambda p: p[0])).encode())
    dest = cache_dir() / USER_FOLDERS / digest.hexdigest()
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        for name, f in zip(names, files):
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            source = local_copy(store, f.ref, name)
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
        os.rename(tmp, dest)
    except FileExistsError:
        pass  # another request assembled the same folder first
    except OSError:
        if not dest.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def materialize(store: ObjectStore, files: Sequence, folder: bool) -> Path:
    """The local path of uploaded user files: one file, or a folder of them."""
    if not files:
        raise UserFileError("no user files given")
    if folder:
        return local_folder(store, files)
    if len(files) != 1:
        raise UserFileError(f"a weight file is one file; got {len(files)}")
    return local_copy(store, files[0].ref, files[0].name)
