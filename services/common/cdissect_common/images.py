"""Decode the images of a shard the same way in every service, with one bad-image policy.

The embedder and the activations service must keep (or skip) exactly the same images of a
shard, or the labeler would pair the wrong rows; so both decode through ``decode_images``.
"""
from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from .errors import invalid_argument
from .vocabulary import BAD_IMAGE_POLICIES

T = TypeVar("T")


def check_bad_image_policy(value: str) -> str:
    """'' means the default 'error'; anything else must be one of BAD_IMAGE_POLICIES."""
    policy = value or "error"
    if policy not in BAD_IMAGE_POLICIES:
        raise invalid_argument(f"on_bad_image must be one of {', '.join(BAD_IMAGE_POLICIES)}, got {value!r}")
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


def prepared_batches(items: Sequence[tuple[str, bytes]], batch_size: int, prepare: Callable[[Any], T],
                     on_bad_image: str = "error", where: str = "") -> Iterator[tuple[list[T], list[str]]]:
    """Decode and ``prepare`` (e.g. the model's preprocessing) the images batch by batch.

    The next batch is prepared on a helper thread while the caller computes on the current one,
    so the device does not wait for JPEG decoding; only two batches are held in memory at a
    time. Yields (prepared images, names skipped in that batch).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    policy = check_bad_image_policy(on_bad_image)
    chunks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]

    def work(chunk: Sequence[tuple[str, bytes]]) -> tuple[list[T], list[str]]:
        images, skipped = decode_images(chunk, policy, where)
        return [prepare(img) for img in images], skipped

    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare") as pool:
        pending: Future = pool.submit(work, chunks[0])
        for nxt in chunks[1:]:
            current = pending.result()
            pending = pool.submit(work, nxt)
            yield current
        yield pending.result()
