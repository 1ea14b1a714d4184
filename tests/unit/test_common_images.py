"""cdissect_common.images: one full decode everywhere, a pixel limit, one image held at a time per
decoding thread, and pixels identical to the plain decode-then-preprocess path (the services decode
through cdissect_common.prefetch, exercised here the way they use it)."""
from __future__ import annotations

import gc
import io
from contextlib import closing

import grpc
import pytest
from PIL import Image

from cdissect_common.errors import ServiceError
from cdissect_common.config import DEFAULTS
from cdissect_common.images import DEFAULT_FIX, SHARD_IMAGE_FIX, UnreadableImageError, decode_image
from cdissect_common.prefetch import prefetched_batches
from tests.conftest import make_probe_images, truncated_jpeg


def prepared_batches(items, batch_size, prepare, where="", max_pixels=DEFAULTS["max_image_pixels"],
                     fix=DEFAULT_FIX, workers=2) -> list[list]:
    """The prepared images of each batch, as the services get them from the prefetch workers."""
    with closing(prefetched_batches(items, batch_size, prepare, list, where=where, max_pixels=max_pixels, fix=fix,
                                    workers=workers)) as batches:
        return [batch.data for batch in batches]


def _items(n: int) -> list[tuple[str, bytes]]:
    return [(name, data) for name, data, _ in make_probe_images(n)]


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def test_batches_keep_order_and_size() -> None:
    items = _items(7)
    batches = list(prepared_batches(items, 3, lambda img: img.size))
    assert [len(b) for b in batches] == [3, 3, 1]
    assert all(s == (32, 32) for b in batches for s in b)
    assert list(prepared_batches([], 4, lambda img: img)) == []


def test_unreadable_image_names_image_place_and_fix() -> None:
    items = _items(4)
    items.insert(2, ("broken.png", b"nope"))
    with pytest.raises(ServiceError) as info:
        list(prepared_batches(items, 2, lambda img: img, where="shard 3", fix=SHARD_IMAGE_FIX))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'broken.png' in shard 3" in info.value.message and "register the probe set again" in info.value.message
    assert "not in an image format PIL can read" in info.value.message and "BytesIO" not in info.value.message


def test_truncated_jpeg_fails_the_full_decode_that_verify_lets_through() -> None:
    data = truncated_jpeg()
    with Image.open(io.BytesIO(data)) as img:
        img.verify()  # the old registration check: passes
    with pytest.raises(UnreadableImageError, match="'cut.jpg': cannot be decoded.*truncated"):
        decode_image("cut.jpg", data)


def test_images_over_the_pixel_limit_are_refused_by_name_before_decoding() -> None:
    data = _encoded(Image.new("RGB", (300, 200), (1, 2, 3)), "PNG")
    assert decode_image("ok.png", data, max_pixels=60_000).size == (300, 200)
    assert decode_image("ok.png", data, max_pixels=0).size == (300, 200)  # 0: no limit
    with pytest.raises(UnreadableImageError) as info:
        decode_image("huge.png", data, max_pixels=59_999)
    assert info.value.over_limit and "300x200 = 60,000 pixels" in str(info.value)
    assert "CDISSECT_MAX_IMAGE_PIXELS" in str(info.value)
    with pytest.raises(ServiceError) as info:
        list(prepared_batches([("huge.png", data)], 2, lambda img: img, where="shard 0", max_pixels=50_000,
                              fix=SHARD_IMAGE_FIX))
    assert "'huge.png' in shard 0" in info.value.message and "register" not in info.value.message


def test_pillows_own_bomb_limit_does_not_override_max_image_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our header check is the limit: Pillow's (which refuses over 2 x MAX_IMAGE_PIXELS, about 179M
    pixels, shrunk here to 20,000 so that a small image crosses it) must not refuse what
    max_image_pixels allows, 0 ("no limit") included."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    data = _encoded(Image.new("L", (300, 200), 7), "PNG")
    assert decode_image("big.png", data, max_pixels=0).size == (300, 200)
    assert decode_image("big.png", data, max_pixels=100_000).size == (300, 200)
    with pytest.raises(UnreadableImageError) as info:
        decode_image("big.png", data, max_pixels=59_999)
    assert info.value.over_limit and "max_image_pixels" in str(info.value)


def test_an_image_over_pillows_limit_decodes_when_max_image_pixels_allows_it() -> None:
    """The reported case: a 13,400 x 13,400 PNG (179.6M pixels, just over Pillow's 178,956,970) with
    the limit raised or off. 1-bit, so the file is ~20 KB; the decode holds ~0.9 GB for a moment."""
    big = Image.new("1", (13_400, 13_400), 0)
    data = _encoded(big, "PNG")
    del big
    with pytest.raises(UnreadableImageError) as info:  # under the default: refused by our header check
        decode_image("big.png", data)
    assert info.value.over_limit and "13400x13400" in str(info.value)
    image = decode_image("big.png", data, max_pixels=0)
    assert image.size == (13_400, 13_400) and image.mode == "RGB"
    del image


@pytest.mark.parametrize("workers", [1, 3])
def test_one_full_resolution_image_per_worker_is_held_while_preparing(workers: int) -> None:
    """Each image is prepared as soon as it is decoded (a batch of huge images used to be held whole)."""
    size = (1500, 1000)
    items = [(f"big{i}.png", _encoded(Image.new("RGB", size, (i, 2 * i, 3 * i)), "PNG")) for i in range(6)]
    alive: list[int] = []

    def prepare(img: Image.Image) -> tuple[int, int]:
        gc.collect()
        alive.append(sum(1 for o in gc.get_objects() if isinstance(o, Image.Image) and o.size == size))
        return img.resize((8, 8)).size

    batches = prepared_batches(items, 6, prepare, workers=workers)
    assert batches == [[(8, 8)] * 6] and len(alive) == 6
    # One thread: exactly one. Several: one per worker, give or take one whose last reference
    # another thread's gc.collect() has not yet seen dropped; never the whole batch.
    assert max(alive) == 1 if workers == 1 else max(alive) <= workers + 1 < 6


def _normal_images() -> list[tuple[str, bytes]]:
    """Everyday inputs: photos-sized JPEGs (RGB, grey, CMYK), PNGs (RGB, RGBA, palette, 16-bit grey)."""
    import numpy as np

    rng = np.random.default_rng(1)
    base = Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    big = Image.fromarray(rng.integers(0, 255, (768, 1024, 3), dtype=np.uint8))
    return [
        ("photo.jpg", _encoded(big, "JPEG", quality=90)),
        ("small.jpg", _encoded(base.resize((500, 375)), "JPEG")),
        ("grey.jpg", _encoded(base.convert("L"), "JPEG")),
        ("cmyk.jpg", _encoded(base.convert("CMYK"), "JPEG")),
        ("rgb.png", _encoded(base, "PNG")),
        ("rgba.png", _encoded(base.convert("RGBA"), "PNG")),
        ("palette.png", _encoded(base.convert("P"), "PNG")),
        ("grey16.png", _encoded(base.convert("I;16"), "PNG")),
        ("tiny.png", _encoded(base.resize((32, 32)), "PNG")),
    ]


def test_preprocessed_pixels_are_bit_identical_to_decode_then_preprocess() -> None:
    """The services' tensors equal those of the plain path (open, convert RGB, preprocess) exactly,
    for the target zoo's and CLIP's preprocessing."""
    import clip
    import torch
    import torchvision

    transforms = {
        "resnet (torchvision)": torchvision.models.ResNet18_Weights.DEFAULT.transforms(),
        "clip 224": clip.clip._transform(224),
    }
    items = _normal_images()
    for label, preprocess in transforms.items():
        expected = []
        for _name, data in items:
            with Image.open(io.BytesIO(data)) as img:
                expected.append(preprocess(img.convert("RGB")))
        got = [t for batch in prepared_batches(items, 4, preprocess) for t in batch]
        assert len(got) == len(expected)
        for (name, _), a, b in zip(items, got, expected):
            assert torch.equal(a, b), f"{label}: {name} differs"
