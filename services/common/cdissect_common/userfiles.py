"""User files (checkpoints, SAE files) travel through the object store; services never open a
path a client names.

The CLI uploads a file the user names (a target or CLIP checkpoint, the files of a model folder,
an SAE) with ``upload_user_file``: it is stored under its sha256, in
chunks of ``CHUNK_BYTES`` (each its own content-keyed object, so memory stays bounded and an
interrupted upload resumes), listed by a small JSON manifest at ``userfiles/<sha256>.json``.
Requests carry the manifest's ``ArtifactRef`` (in a ``UserFile`` with the file's name or path
inside its folder). A service turns it into a local file with ``local_copy`` (a model folder:
``local_folder``; either: ``materialize``): downloaded once into its cache folder
(``<cache_dir>/userfiles/<sha256>/<name>``),
every chunk and the whole file digest-verified before the file appears under its final name,
safe when several threads or processes ask at once. The file keeps its name, so loaders that
look at the suffix (``.safetensors``) and model ids (``file:<name>``) see what the user had,
and content keys, which carry the file's sha256, are the same as for a local file.

A path in a request is a *server* path: ``server_path`` accepts it only inside the folders the
operator listed in the ``model_dirs`` setting (``CDISSECT_MODEL_DIRS``), and answers the same
for a file outside them whether or not it exists.

Which part of a model string is a file is decided by one rule, ``cdissect_common.model_specs``
(``looks_like_path``, ``parse_model`` for targets, ``split_checkpoint`` for CLIP models).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath

from cdissect.v1 import common_pb2

from .config import ENV_VARS
from .store import ObjectStore, check_key, sha256_hex

PREFIX = "userfiles/"
CHUNKS_PREFIX = "userfiles/chunks/"
CHUNK_BYTES = 4 * 1024 * 1024  # below S3's 5 MiB part size: one PUT per chunk, verified by its MD5
MANIFEST_VERSION = 1
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")

Progress = Callable[[int, int], None]
"""progress(bytes done, bytes in all), called after each chunk."""


class UserFileError(ValueError):
    """A user file cannot be uploaded or fetched (missing file, damaged manifest); says what to do."""


class ServerPathError(PermissionError):
    """A request named a server path outside the operator's model folders (or none are configured)."""


class ModelFileMissingError(FileNotFoundError):
    """A request named a file inside the model folders that is not there."""


# --- CLI side: upload ---------------------------------------------------------------------

def _safe_name(name: str) -> str:
    cleaned = _SAFE_NAME.sub("_", Path(name).name).strip("._") or "file"
    return cleaned[:120]


def manifest_key(sha256: str) -> str:
    """Where the manifest of the user file with this digest lives."""
    return f"{PREFIX}{sha256}.json"


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(CHUNK_BYTES)
            if not chunk:
                return
            yield chunk


def upload_user_file(store: ObjectStore, path: str | os.PathLike[str],
                     progress: Progress | None = None) -> common_pb2.ArtifactRef:
    """Store a local file in `store` under its sha256 and return the ref requests carry.

    Idempotent: chunks and the manifest are content-keyed, and ones already stored are not sent
    again. Reads the file in ``CHUNK_BYTES`` pieces (memory stays bounded). A file that changes
    while it is read fails with UserFileError rather than storing a mix.
    """
    source = Path(path).expanduser()
    if not source.is_file():
        raise UserFileError(f"{source} is not a file; give the path of a checkpoint file on this machine")
    whole = hashlib.sha256()
    for chunk in _chunks(source):
        whole.update(chunk)
    digest = whole.hexdigest()
    size = source.stat().st_size
    key = manifest_key(digest)
    if store.exists(key):
        ref = store.ref(key)
        if progress is not None:
            progress(size, size)
        return _with_producer(ref, digest, size, _safe_name(source.name))
    chunks, done, check = [], 0, hashlib.sha256()
    for chunk in _chunks(source):
        chunk_sha = sha256_hex(chunk)
        store.put(f"{CHUNKS_PREFIX}{chunk_sha}", chunk, {"kind": "userfile-chunk"}, if_absent=True)
        chunks.append({"sha256": chunk_sha, "size": len(chunk)})
        check.update(chunk)
        done += len(chunk)
        if progress is not None:
            progress(done, size)
    if check.hexdigest() != digest or done != size:
        raise UserFileError(f"{source} changed while it was uploaded; upload it again once it is complete")
    manifest = {"version": MANIFEST_VERSION, "sha256": digest, "size": size, "name": _safe_name(source.name),
                "chunks": chunks}
    data = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    ref = store.put(key, data, {"kind": "userfile", "file-sha256": digest}, if_absent=True)
    return _with_producer(ref, digest, size, manifest["name"])


def _with_producer(ref: common_pb2.ArtifactRef, digest: str, size: int, name: str) -> common_pb2.ArtifactRef:
    out = common_pb2.ArtifactRef()
    out.CopyFrom(ref)
    out.producer.update({"kind": "userfile", "file_sha256": digest, "size": str(size), "name": name})
    return out


# --- service side: local copy ---------------------------------------------------------------

def _read_manifest(store: ObjectStore, ref: common_pb2.ArtifactRef) -> dict:
    key = ref.key
    try:
        check_key(key)
    except ValueError as exc:
        raise UserFileError(str(exc)) from None
    if not (key.startswith(PREFIX) and key.endswith(".json")) or key.startswith(CHUNKS_PREFIX):
        raise UserFileError(f"{key!r} is not a user file: pass the ref upload_user_file returned "
                            f"({PREFIX}<sha256>.json)")
    if not ref.sha256:
        raise UserFileError(f"the ref of user file {key!r} has no sha256; pass the ref upload_user_file returned")
    doc = json.loads(store.get(key, sha256=ref.sha256))
    try:
        digest, size, name = str(doc["sha256"]), int(doc["size"]), _safe_name(str(doc["name"]))
        chunks = [(str(c["sha256"]), int(c["size"])) for c in doc["chunks"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise UserFileError(f"user file manifest {key!r} is damaged ({exc}); upload the file again") from None
    if (not _HEX64.match(digest) or key != manifest_key(digest) or sum(s for _, s in chunks) != size
            or not all(_HEX64.match(c) for c, _ in chunks)):
        raise UserFileError(f"user file manifest {key!r} does not describe its file; upload the file again")
    return {"sha256": digest, "size": size, "name": name, "chunks": chunks}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` across threads and processes (flock on a fresh descriptor)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def local_copy(store: ObjectStore, ref: common_pb2.ArtifactRef, cache_root: str | os.PathLike[str]) -> Path:
    """The user file `ref` names, as a verified local file under `cache_root`/userfiles.

    The first caller downloads it (chunk by chunk into a temporary file, each chunk and then the
    whole file checked against their sha256) and renames it into place; concurrent callers wait
    for that and reuse it, and later calls find it at once.
    """
    manifest = _read_manifest(store, ref)
    folder = Path(cache_root).expanduser() / "userfiles" / manifest["sha256"]
    final = folder / manifest["name"]
    if final.is_file() and final.stat().st_size == manifest["size"]:
        return final
    with _locked(folder.parent / f"{manifest['sha256']}.lock"):
        if final.is_file() and final.stat().st_size == manifest["size"]:
            return final  # another caller finished it while this one waited
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".download-")
        try:
            whole = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                for chunk_sha, chunk_size in manifest["chunks"]:
                    chunk = store.get(f"{CHUNKS_PREFIX}{chunk_sha}", sha256=chunk_sha)
                    if len(chunk) != chunk_size:
                        raise UserFileError(f"chunk {chunk_sha} of user file {ref.key!r} has the wrong size")
                    whole.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if whole.hexdigest() != manifest["sha256"]:
                raise UserFileError(f"user file {ref.key!r} reassembles to sha256 {whole.hexdigest()}, not "
                                    f"{manifest['sha256']}; upload the file again")
            os.replace(tmp_name, final)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
    return final


def local_folder(store: ObjectStore, files: Sequence, cache_root: str | os.PathLike[str]) -> Path:
    """A service-local folder (a model folder) holding every uploaded file of `files`, each an
    object with ``.name`` (its path inside the folder) and ``.ref`` (a ``UserFile``).

    Assembled from the files' local copies (hard links where possible) under the digest of its
    (name, sha256) list, in a temporary folder renamed into place: concurrent callers agree.
    """
    names = [_relative_name(f.name) for f in files]
    if len(set(names)) != len(names):
        raise UserFileError(f"a model folder lists a file twice: {sorted(names)}")
    listing = "".join(f"{n} {f.ref.sha256}\n" for n, f in sorted(zip(names, files), key=lambda p: p[0]))
    dest = Path(cache_root).expanduser() / "userfolders" / hashlib.sha256(listing.encode()).hexdigest()
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        for name, f in zip(names, files):
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            source = local_copy(store, f.ref, cache_root)
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


def materialize(store: ObjectStore, files: Sequence, folder: bool, cache_root: str | os.PathLike[str]) -> Path:
    """The local path of a request's uploaded user files: one file, or a folder of them."""
    if not files:
        raise UserFileError("no user files given")
    if folder:
        return local_folder(store, files, cache_root)
    if len(files) != 1:
        raise UserFileError(f"a weight file is one file; got {len(files)}")
    return local_copy(store, files[0].ref, cache_root)


def _relative_name(name: str) -> str:
    rel = PurePosixPath(name)
    if not name or rel.is_absolute() or ".." in rel.parts or "\\" in name:
        raise UserFileError(f"user file name {name!r} must be a relative path inside its folder")
    return str(rel)


# --- service side: server paths -------------------------------------------------------------

def server_path(text: str, model_dirs: tuple[str, ...] | list[str]) -> Path:
    """The file a request names by server path, if it lies inside one of `model_dirs`.

    Relative paths are taken inside each folder in turn. Anything outside (after resolving
    symlinks and '..') raises ServerPathError with the same message whether or not it exists,
    so a caller cannot probe the server's files. A missing file inside a folder raises
    ModelFileMissingError naming the folders.
    """
    setting = ENV_VARS["model_dirs"]
    upload_hint = "to use a checkpoint of your own, give its path to the cdissect CLI, which uploads it to the store"
    if not model_dirs:
        raise ServerPathError(f"this service opens no files named in requests ({setting} is not set); "
                              f"{upload_hint}")
    roots = [Path(os.path.realpath(Path(d).expanduser())) for d in model_dirs]
    raw = Path(text.strip()).expanduser()
    candidates = [raw] if raw.is_absolute() else [root / raw for root in roots]
    for candidate in candidates:
        real = Path(os.path.realpath(candidate))
        if any(real == root or root in real.parents for root in roots):
            if not real.exists():
                raise ModelFileMissingError(f"{text} is not in the model folders of this service "
                                            f"({', '.join(map(str, roots))}); check the name")
            return real
    raise ServerPathError(f"{text} is not inside the model folders this service may open ({setting}); "
                          f"{upload_hint}")


def request_checkpoint(store: ObjectStore, ref: common_pb2.ArtifactRef | None, path_text: str | None,
                       model_dirs: tuple[str, ...] | list[str], cache_root: str | os.PathLike[str]) -> Path | None:
    """The local checkpoint file of a request: its uploaded file (`ref`), else its server path
    (`path_text`, checked by ``server_path``), else None. Both at once is a UserFileError."""
    uploaded = ref is not None and bool(ref.key)
    if uploaded and path_text:
        raise UserFileError(f"the request names a checkpoint twice: the uploaded file {ref.key} and the path "
                            f"{path_text}; send one of them")
    if uploaded:
        return local_copy(store, ref, cache_root)
    if path_text:
        return server_path(path_text, model_dirs)
    return None
