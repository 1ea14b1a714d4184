"""Decode images one way everywhere: registration decides which images are readable, the services decode exactly those.

Skipping is decided once, when a probe set is registered (``manifest.register_dataset`` fully
decodes every image with ``decode_image``); a registered shard therefore holds only images the
services can decode, and every row of every array belongs to the image the manifest lists at
that index. A service that still meets an unreadable image (a shard registered by an older
version, or an image library that reads fewer formats) refuses the shard, naming the image,
rather than skip it and shift every later row.

Memory is bounded from outside: an image over ``max_image_pixels`` (a setting) is refused from
its header, before any pixel is decoded, and ``prepared_batches`` prepares (resizes) each image
as soon as it is decoded, so a decoding thread holds at most one full-resolution image, never a
batch of them. The pixels are those of a plain full decode (no JPEG ``draft``/``reduce``, which
would change them), so results do not depend on the memory path taken.
"""
from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from .config import DEFAULTS, ENV_VARS
from .vocabulary import BAD_IMAGE_POLICIES

SHARD_IMAGE_FIX = ("registration decodes every image, so this shard was registered by an older cdissect or where "
                   "more image formats can be read: register the probe set again (cdissect datasets add, or rerun "
                   "`cdissect run`, which re-registers changed folders)")
T = TypeVar("T")


class UnreadableImageError(ValueError):
    """An image cannot be used: not decodable, truncated, or over the pixel limit."""

    def __init__(self, name: str, reason: str, over_limit: bool = False) -> None:
        super().__init__(f"image {name!r}: {reason}")
        self.name = name
        self.reason = reason
        self.over_limit = over_limit


def check_bad_image_policy(value: str) -> str:
    """'' means the default 'error'; anything else must be one of BAD_IMAGE_POLICIES (a ServiceError otherwise)."""
    from .errors import invalid_argument  # here: errors imports manifest, which imports this module

    policy = value or "error"
    if policy not in BAD_IMAGE_POLICIES:
        raise invalid_argument(f"on_bad_image must be one of {', '.join(BAD_IMAGE_POLICIES)}, got {value!r}")
    return policy


def decode_image(name: str, data: bytes, max_pixels: int = DEFAULTS["max_image_pixels"]) -> Any:
    """The fully decoded RGB PIL image of ``data``; UnreadableImageError naming ``name`` otherwise.

    ``max_pixels`` (0 = no limit) is checked from the header, before decoding. A truncated
    file fails here (a full decode), unlike PIL's ``verify()``, which accepts it.
    """
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if max_pixels and width * height > max_pixels:
            raise UnreadableImageError(name, f"{width}x{height} = {width * height:,} pixels is over the limit of "
                                             f"{max_pixels:,} (max_image_pixels, {ENV_VARS['max_image_pixels']}); "
                                             f"downscale the image or raise the limit", over_limit=True)
        img.load()
        return img if img.mode == "RGB" else img.convert("RGB")
    except UnreadableImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad data
        raise UnreadableImageError(name, f"cannot be decoded ({type(exc).__name__}: {exc})") from None


def prepared_batches(items: Sequence[tuple[str, bytes]], batch_size: int, prepare: Callable[[Any], T],
                     where: str = "", max_pixels: int = DEFAULTS["max_image_pixels"],
                     fix: str = "send only readable JPEG/PNG images") -> Iterator[list[T]]:
    """Decode and ``prepare`` (e.g. the model's preprocessing) the images batch by batch.

    Each image is prepared right after it is decoded and then dropped, so only one
    full-resolution image is held at a time. The next batch is prepared on a helper thread while
    the caller computes on the current one, so the device does not wait for decoding. An
    unreadable image raises INVALID_ARGUMENT naming it, ``where`` it is and ``fix``.
    """
    from .errors import invalid_argument

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]

    def work(chunk: Sequence[tuple[str, bytes]]) -> list[T]:
        out = []
        for name, data in chunk:
            try:
                image = decode_image(name, data, max_pixels)
            except UnreadableImageError as exc:
                raise invalid_argument(f"image {name!r}{' in ' + where if where else ''}: {exc.reason}"
                                       + ("" if exc.over_limit else f"; {fix}")) from None
            out.append(prepare(image))
            del image
        return out

    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare") as pool:
        pending: Future = pool.submit(work, chunks[0])
        for nxt in chunks[1:]:
            current = pending.result()
            pending = pool.submit(work, nxt)
            yield current
        yield pending.result()
