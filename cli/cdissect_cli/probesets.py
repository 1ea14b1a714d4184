"""Probe sets: the images shown to the target network and to CLIP, in the reference's order.

``resolve_probe_set(name_or_path, root)`` gives a ``ProbeSet`` whose ``images`` yield
``ProbeImage(name, path, data, labels)`` lazily, in exactly the order CLIP-Dissect's
``data_utils.get_data`` produces (spec §3.1), because dataset order is the row order of every
activation and embedding array:

=================  ==========================================================================
``broden``         ROOT/broden1_224/images/, torchvision ImageFolder order (sorted source folders
                   ade20k, dtd, opensurfaces, pascal; files sorted), JPEG photos only (the
                   segmentation PNGs that the zip also holds are skipped). labels: ``source``.
``imagenet_val``   ROOT/imagenet_val/ (or ROOT/ImageNet_val/), class folders, ImageFolder order.
                   labels: ``class`` (folder, a WordNet id) and ``class_index`` (its sorted rank).
``imagenet_broden`` imagenet_val, then broden (ImageNet first, as the reference's ConcatDataset).
``cifar100_train`` ROOT/cifar-100-python/train (resp. ``test`` for ``cifar100_val``), the official
``cifar100_val``   python pickle batches, in file order; each 32×32 image encoded as PNG bytes.
                   labels: ``class`` (fine label name), ``coarse_class``.
``places365_val``  ROOT/places365/ in torchvision's layout (val_256/, places365_val.txt,
                   categories_places365.txt), in the order of places365_val.txt. labels:
                   ``class`` (the category as in the ``places365`` concept set, e.g. ``airfield``).
any folder         class subfolders → ImageFolder order, label ``class``; otherwise its image
                   files sorted by name. An ``attributes.csv`` or ``labels.csv`` with a ``name``
                   column (file name or path relative to the folder) adds its other columns as
                   labels (the shapes world writes attributes.csv this way).
=================  ==========================================================================

ROOT is ``root`` if given, else ``cdissect_common.downloads.data_dir()`` (``$CDISSECT_DATA_DIR``,
the config file's ``data_dir``, else ``~/.cache/cdissect/data``). This module only catalogues
and reads sets already on disk; ``cdissect_cli.probeset_download.download_probe_set`` fetches and
unpacks the sets with public addresses (broden, cifar100). torch-free; part of the CLI only.

The CIFAR-100 batches are Python pickles (the dataset's official format). They are read with an
unpickler that only admits numpy arrays and plain containers, so a tampered file cannot run code.
"""
from __future__ import annotations

import csv
import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from cdissect_common.downloads import DownloadError, data_dir

from .concepts import parse_concept_lines, shipped_path

# torchvision.datasets.folder.IMG_EXTENSIONS, compared in lower case as ImageFolder does.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
JPEG_EXTENSIONS = (".jpg", ".jpeg")
NAMED_SETS = ("broden", "imagenet_val", "imagenet_broden", "cifar100_train", "cifar100_val", "places365_val")
LABEL_FILES = ("attributes.csv", "labels.csv")

BRODEN_URL = "http://netdissect.csail.mit.edu/data/broden1_224.zip"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"


class ProbeSetError(ValueError):
    """A probe set is unknown, missing or malformed."""


class ProbeSetNotFoundError(ProbeSetError, FileNotFoundError):
    """The probe set's files are not where they should be."""


class ProbeSetDownloadError(ProbeSetError, DownloadError):
    """A download failed (no network, host down, bad archive)."""

    __init__ = DownloadError.__init__  # (message, url, dest, reason), not ValueError's


@dataclass(frozen=True)
class ProbeImage:
    """One probe image: a file (``path``) or in-memory encoded bytes (``data``), plus labels."""

    name: str
    path: Path | None = None
    data: bytes | None = None
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def path_or_bytes(self) -> Path | bytes | None:
        """The contract's single source field: the in-memory bytes if any, else the file path."""
        return self.data if self.data is not None else self.path

    def read_bytes(self) -> bytes:
        """The encoded image (JPEG/PNG/...) bytes."""
        if self.data is not None:
            return self.data
        if self.path is None:
            raise ProbeSetError(f"probe image {self.name!r} has neither a path nor data.")
        return self.path.read_bytes()


@dataclass(frozen=True)
class ProbeSet:
    """A probe set; iterate ``images`` (a fresh lazy iterator each time) in dataset order."""

    name: str
    root: Path
    num_images: int
    _factory: Callable[[], Iterator[ProbeImage]] = field(repr=False)

    @property
    def images(self) -> Iterator[ProbeImage]:
        """The images in dataset order (the row order of every array computed from them)."""
        return self._factory()

    def __iter__(self) -> Iterator[ProbeImage]:
        return self._factory()

    def __len__(self) -> int:
        return self.num_images


# ----------------------------------------------------------------------------- folder order
def _is_image(path: str, extensions: tuple[str, ...]) -> bool:
    return path.lower().endswith(extensions)


def image_folder_files(directory: Path, extensions: tuple[str, ...] = IMG_EXTENSIONS) -> list[tuple[Path, str]]:
    """(file, class folder) in torchvision ImageFolder order: sorted class folders, then within
    each, ``sorted(os.walk(...))`` directories and sorted file names."""
    classes = sorted(e.name for e in os.scandir(directory) if e.is_dir())
    out: list[tuple[Path, str]] = []
    for cls in classes:
        for walk_root, _, fnames in sorted(os.walk(directory / cls, followlinks=True)):
            for fname in sorted(fnames):
                if _is_image(fname, extensions):
                    out.append((Path(walk_root) / fname, cls))
    return out


def _require_dir(path: Path, set_name: str, hint: str) -> Path:
    if not path.is_dir():
        raise ProbeSetNotFoundError(f"probe set {set_name!r}: {path} does not exist. {hint}")
    return path


def _folder_set(directory: Path, extensions: tuple[str, ...], label_key: str,
                prefix: str = "", with_index: bool = False) -> list[ProbeImage]:
    """ImageFolder-ordered images of a class-folder tree, labelled with their folder."""
    files = image_folder_files(directory, extensions)
    index = {c: str(i) for i, c in enumerate(sorted(e.name for e in os.scandir(directory) if e.is_dir()))}
    images = []
    for path, cls in files:
        labels = {label_key: cls}
        if with_index:
            labels["class_index"] = index[cls]
        images.append(ProbeImage(prefix + path.relative_to(directory).as_posix(), path, None, labels))
    return images


def _broden(root: Path, prefix: str = "") -> list[ProbeImage]:
    images_dir = _require_dir(root / "broden1_224" / "images", "broden",
                              f"Run download_probe_set('broden', {str(root)!r}) or unzip {BRODEN_URL} "
                              f"into {root}.")
    files = _folder_set(images_dir, JPEG_EXTENSIONS, "source", prefix)
    if not files:
        raise ProbeSetNotFoundError(f"probe set 'broden': no JPEG photos under {images_dir}/<source>/.")
    return files


def _imagenet_dir(root: Path) -> Path:
    for cand in ("imagenet_val", "ImageNet_val"):
        if (root / cand).is_dir():
            return root / cand
    raise ProbeSetNotFoundError(
        f"probe set 'imagenet_val': no {root / 'imagenet_val'} folder. ImageNet has no public download; "
        f"place the 50,000 validation images under {root / 'imagenet_val'}/<wnid>/*.JPEG (class folders).")


def _imagenet(root: Path, prefix: str = "") -> list[ProbeImage]:
    return _folder_set(_imagenet_dir(root), IMG_EXTENSIONS, "class", prefix, with_index=True)


# ----------------------------------------------------------------------------- CIFAR-100
class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only (what the CIFAR batches hold)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")


def _load_cifar_pickle(path: Path) -> dict:
    with open(path, "rb") as fh:
        obj = _ArrayOnlyUnpickler(fh, encoding="latin1").load()
    if not isinstance(obj, dict):
        raise ProbeSetError(f"{path} is not a CIFAR-100 batch (expected a dict).")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _text(value: object) -> str:
    """Names in the batches are str (Python 2 pickles read as latin1) or bytes (re-pickled)."""
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _cifar_dir(root: Path, set_name: str) -> Path:
    return _require_dir(root / "cifar-100-python", set_name,
                        f"Run download_probe_set('cifar100', {str(root)!r}) or extract {CIFAR100_URL} into {root}.")


def _count_cifar(root: Path, split: str, set_name: str) -> int:
    batch = _load_cifar_pickle(_cifar_dir(root, set_name) / split)
    return len(batch["fine_labels"])


def _cifar_images(root: Path, split: str, set_name: str) -> Iterator[ProbeImage]:
    import numpy as np
    from PIL import Image

    base = _cifar_dir(root, set_name)
    batch = _load_cifar_pickle(base / split)
    meta = _load_cifar_pickle(base / "meta")
    fine, coarse = meta["fine_label_names"], meta.get("coarse_label_names")
    data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    names = batch.get("filenames")
    for i in range(data.shape[0]):
        buf = io.BytesIO()
        Image.fromarray(data[i]).save(buf, format="PNG")
        labels = {"class": _text(fine[batch["fine_labels"][i]])}
        if coarse is not None and "coarse_labels" in batch:
            labels["coarse_class"] = _text(coarse[batch["coarse_labels"][i]])
        fname = _text(names[i]) if names is not None else f"{i}.png"
        yield ProbeImage(f"{i:05d}_{fname}", None, buf.getvalue(), labels)


# ----------------------------------------------------------------------------- Places365
def _places365(root: Path) -> list[ProbeImage]:
    base = _require_dir(root / "places365", "places365_val",
                        f"Place torchvision's small Places365 val layout under {root / 'places365'}: val_256/, "
                        "places365_val.txt, categories_places365.txt (from http://places2.csail.mit.edu).")
    listing = base / "places365_val.txt"
    if not listing.is_file():
        raise ProbeSetNotFoundError(f"probe set 'places365_val': {listing} is missing; it lists "
                                    "'Places365_val_00000001.jpg <class>' per line.")
    cats_file = base / "categories_places365.txt"
    cats_text = cats_file.read_text() if cats_file.is_file() else shipped_path("places365").read_text()
    categories, _ = parse_concept_lines(cats_text, places365_format=True)
    images = []
    for line in listing.read_text().splitlines():
        if not line.strip():
            continue
        fname, cls = line.split()
        images.append(ProbeImage(f"val_256/{fname}", base / "val_256" / fname.lstrip("/"), None,
                                 {"class": categories[int(cls)], "class_index": cls}))
    return images


# ----------------------------------------------------------------------------- any folder
def _label_table(directory: Path) -> dict[str, dict[str, str]]:
    for fname in LABEL_FILES:
        path = directory / fname
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                if not reader.fieldnames or "name" not in reader.fieldnames:
                    raise ProbeSetError(f"{path} has no 'name' column; its first row must name the columns, "
                                        "with 'name' holding each image's file name.")
                return {row["name"]: {k: v for k, v in row.items() if k != "name" and k is not None}
                        for row in reader}
    return {}


def _plain_folder(directory: Path) -> list[ProbeImage]:
    table = _label_table(directory)
    has_classes = any(e.is_dir() for e in os.scandir(directory))
    if has_classes:
        pairs = image_folder_files(directory)
    else:
        pairs = [(p, None) for p in sorted(directory.iterdir(), key=lambda p: p.name)
                 if p.is_file() and _is_image(p.name, IMG_EXTENSIONS)]
    images = []
    for path, cls in pairs:
        rel = path.relative_to(directory).as_posix()
        labels = {"class": cls} if cls is not None else {}
        labels.update(table.get(rel, table.get(path.name, {})))
        images.append(ProbeImage(rel, path, None, labels))
    if not images:
        raise ProbeSetNotFoundError(f"folder {directory} holds no images ({', '.join(IMG_EXTENSIONS)}).")
    return images


# ----------------------------------------------------------------------------- entry points
def resolve_probe_set(name_or_path: str | Path, root: str | Path | None = None) -> ProbeSet:
    """A named probe set under ``root`` (see module doc) or any image folder by path."""
    key = str(name_or_path)
    base = Path(root).expanduser() if root is not None else data_dir()
    if key in ("cifar100_train", "cifar100_val"):
        split = "train" if key == "cifar100_train" else "test"
        count = _count_cifar(base, split, key)
        return ProbeSet(key, base, count, lambda: _cifar_images(base, split, key))
    if key == "broden":
        images = _broden(base)
    elif key == "imagenet_val":
        images = _imagenet(base)
    elif key == "imagenet_broden":
        images = _imagenet(base, "imagenet_val/") + _broden(base, "broden/")
    elif key == "places365_val":
        images = _places365(base)
    else:
        path = Path(key).expanduser()
        if not path.is_dir():
            raise ProbeSetNotFoundError(
                f"unknown probe set {key!r}: not one of {', '.join(NAMED_SETS)} and not a folder. "
                "Pass a named set or the path of a folder of images.")
        images = _plain_folder(path)
        return ProbeSet(path.name, path, len(images), lambda: iter(images))
    return ProbeSet(key, base, len(images), lambda: iter(images))


def probe_set_names() -> list[str]:
    """Names resolve_probe_set understands besides folder paths."""
    return list(NAMED_SETS)


__all__ = ["ProbeImage", "ProbeSet", "ProbeSetError", "ProbeSetNotFoundError", "ProbeSetDownloadError",
           "resolve_probe_set", "image_folder_files", "probe_set_names", "BRODEN_URL", "CIFAR100_URL"]
