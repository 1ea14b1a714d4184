"""Small JPEG thumbnails of probe images, cut from the dataset shards in the object store.

A unit's top images are global image indices in the dataset's fixed order. The manifest maps
each index to (shard, member name, sha256); only the shards that hold a wanted image are
fetched, each once. Thumbnails are named by the image's sha256, so an image shown for many
units (or in many layers) is written once, and a regenerated report reuses what is there.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from PIL import Image, UnidentifiedImageError

from cdissect.v1 import common_pb2
from cdissect_common.manifest import DatasetError, read_shard
from cdissect_cli.errors import CliError

THUMB_SIZE = 96
THUMB_DIR = f"thumbs-{THUMB_SIZE}"
JPEG_QUALITY = 82


@dataclass(frozen=True)
class ImageInfo:
    """Where one probe image lives and what it is called."""

    index: int
    shard: int  # position of its shard in the manifest
    name: str  # member name inside the shard tar
    sha256: str
    labels: dict[str, str]


@dataclass(frozen=True)
class Thumbnail:
    """A written thumbnail: path relative to the report's assets folder, and a caption."""

    path: str
    caption: str


def index_manifest(manifest: common_pb2.DatasetManifest) -> list[ImageInfo]:
    """Every image of the manifest in dataset order (list position == global index)."""
    images: list[ImageInfo] = []
    for shard_pos, shard in enumerate(manifest.shards):
        for entry in shard.images:
            images.append(ImageInfo(index=len(images), shard=shard_pos, name=entry.name,
                                    sha256=entry.sha256, labels=dict(entry.labels)))
    return images


def make_thumbnail(data: bytes, size: int = THUMB_SIZE) -> bytes:
    """JPEG bytes of the image scaled to fit in size × size (aspect kept, RGB)."""
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        img.thumbnail((size, size), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return out.getvalue()


def _caption(info: ImageInfo) -> str:
    """Tooltip text: image number, member name and labels."""
    labels = ", ".join(f"{k}={v}" for k, v in sorted(info.labels.items()))
    return f"#{info.index} {info.name}" + (f" ({labels})" if labels else "")


def write_thumbnails(store, manifest: common_pb2.DatasetManifest, indices: Iterable[int],
                     assets_dir: Path) -> dict[int, Thumbnail]:
    """Write thumbnails of the images `indices` into assets_dir/THUMB_DIR; returns index → Thumbnail.

    `store` is a cdissect_common store. Shards are read (and digest-checked) with
    cdissect_common.manifest.read_shard, only those holding a wanted image. Indices outside the
    dataset raise an error (the run and the manifest disagree); an undecodable image is skipped.
    """
    images = index_manifest(manifest)
    wanted = sorted(set(int(i) for i in indices))
    bad = [i for i in wanted if not 0 <= i < len(images)]
    if bad:
        raise CliError(f"top-image indices {bad[:5]} are outside the probe set of {len(images)} "
                       f"images in manifest {manifest.name!r}: the run's results and its dataset "
                       f"manifest disagree. Rerun `cdissect run` for this probe set.")
    out_dir = Path(assets_dir) / THUMB_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[int, Thumbnail] = {}
    pending: dict[int, list[ImageInfo]] = {}
    for index in wanted:
        info = images[index]
        digest = info.sha256 or f"idx{index}"
        rel = f"{THUMB_DIR}/{digest[:24]}.jpg"
        result[index] = Thumbnail(path=rel, caption=_caption(info))
        if not (Path(assets_dir) / rel).is_file():
            pending.setdefault(info.shard, []).append(info)
    for shard_pos, infos in sorted(pending.items()):
        wanted_names = {info.name: info for info in infos}
        try:
            members = read_shard(store, manifest.shards[shard_pos])
        except DatasetError as err:
            raise CliError(f"cannot read the probe images: {err}") from err
        for entry, data in members:
            info = wanted_names.get(entry.name)
            if info is None:
                continue
            try:
                thumb = make_thumbnail(data)
            except (UnidentifiedImageError, OSError):
                del result[info.index]
                continue
            target = Path(assets_dir) / result[info.index].path
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(thumb)
            tmp.replace(target)
    return result
