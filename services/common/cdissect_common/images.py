"""Decode images one way everywhere: registration decides which images are readable, the services decode exactly those.

Skipping is decided once, when a probe set is registered (``manifest.register_dataset`` fully
decodes every image with ``decode_image``); a registered shard therefore holds only images the
services can decode, and every row of every array belongs to the image the manifest lists at
that index. A service that still meets an unreadable image (a shard registered by an older
version, or an image library that reads fewer formats) refuses the shard, naming the image,
rather than skip it and shift every later row.

Memory is bounded from outside: an image over ``max_image_pixels`` (a setting) is refused from
its header, before any pixel is decoded, and ``prefetch.prefetched_batches`` prepares (resizes)
each image as soon as it is decoded, so each decoding thread holds at most one full-resolution
image, never a batch of them. The pixels are those of a plain full decode (no JPEG ``draft``/``reduce``, which
would change them), so results do not depend on the memory path taken. That header check replaces
Pillow's own decompression-bomb limit, which is switched off where images are opened here
(``PIL.Image.MAX_IMAGE_PIXELS = None``): otherwise Pillow would still refuse images over about 179M
pixels whatever ``max_image_pixels`` says (0, "no limit", included).
"""
from __future__ import annotations

import io
from typing import Any

from .config import DEFAULTS, ENV_VARS
from .vocabulary import BAD_IMAGE_POLICIES

DEFAULT_FIX = "send only readable JPEG/PNG images"
SHARD_IMAGE_FIX = ("registration decodes every image, so this shard was registered by an older cdissect or where "
                   "more image formats can be read: register the probe set again (cdissect datasets add, or rerun "
                   "`cdissect run`, which re-registers changed folders)")


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
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # the limit is ours (max_pixels, checked below); see the module doc
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
    except UnidentifiedImageError:  # its message shows the in-memory buffer's repr, not the image
        raise UnreadableImageError(name, "not in an image format PIL can read (JPEG, PNG, GIF, BMP, TIFF, "
                                         "WebP, ...)") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad data
        raise UnreadableImageError(name, f"cannot be decoded ({type(exc).__name__}: {exc})") from None


def decode_or_refuse(name: str, data: bytes, where: str = "", max_pixels: int = DEFAULTS["max_image_pixels"],
                     fix: str = DEFAULT_FIX) -> Any:
    """``decode_image`` for a service: an unreadable image raises INVALID_ARGUMENT naming it,
    ``where`` it is and ``fix`` (the services decode through ``prefetch.prefetched_batches``)."""
    from .errors import invalid_argument

    try:
        return decode_image(name, data, max_pixels)
    except UnreadableImageError as exc:
        raise invalid_argument(f"image {name!r}{' in ' + where if where else ''}: {exc.reason}"
                               + ("" if exc.over_limit else f"; {fix}")) from None
