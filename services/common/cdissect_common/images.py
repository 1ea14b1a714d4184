"""Decode the images of a shard the same way in every service, with one bad-image policy.

The embedder and the activations service must keep (or skip) exactly the same images of a
shard, or the labeler would pair the wrong rows; so both decode through ``decode_images``.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from .errors import invalid_argument

BAD_IMAGE_POLICIES = ("error", "skip")


def check_bad_image_policy(value: str) -> str:
    """'' means the default 'error'; anything else must be error | skip."""
    policy = value or "error"
    if policy not in BAD_IMAGE_POLICIES:
        raise invalid_argument(f"on_bad_image must be 'error' or 'skip', got {value!r}")
    return policy


def decode_images(items: Sequence[tuple[str, bytes]], on_bad_image: str = "error",
                  where: str = "") -> tuple[list[Any], list[str]]:
    """RGB PIL images of (name, bytes) pairs, and the names skipped as unreadable.

    With ``on_bad_image='error'`` the first unreadable image raises INVALID_ARGUMENT naming it.
    """
    from PIL import Image

    policy = check_bad_image_policy(on_bad_image)
    images: list[Any] = []
    skipped: list[str] = []
    for name, data in items:
        try:
            with Image.open(io.BytesIO(data)) as img:
                images.append(img.convert("RGB"))
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad data
            if policy == "error":
                raise invalid_argument(
                    f"image {name!r}{' in ' + where if where else ''} cannot be decoded ({type(exc).__name__}: "
                    f"{exc}); remove or replace it, or set on_bad_image=skip") from None
            skipped.append(name)
    return images, skipped
