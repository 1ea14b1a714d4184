"""The shapes-world generator: deterministic bytes, complete attributes, the probe-folder layout."""
from __future__ import annotations

import csv
import hashlib
import io
import sys
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cdissect_shapes.generator import ATTRIBUTE_COLUMNS, generate, read_attributes, render_batch, write_probe_folder
from cdissect_shapes.world import ATTRIBUTES


def _digest(n: int, seed: int) -> str:
    h = hashlib.sha256()
    for name, data, attrs in generate(n, seed):
        h.update(name.encode() + data + repr(sorted(attrs.items())).encode())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    assert _digest(20, 3) == _digest(20, 3)
    assert _digest(20, 3) != _digest(20, 4)


def test_images_are_64px_rgb_pngs_with_every_attribute() -> None:
    for name, data, attrs in generate(5, 0):
        img = Image.open(io.BytesIO(data))
        assert img.format == "PNG" and img.mode == "RGB" and img.size == (64, 64)
        assert set(attrs) == set(ATTRIBUTE_COLUMNS)
        for key, values in ATTRIBUTES.items():
            assert attrs[key] in values
        assert name.endswith(".png")


def test_every_attribute_value_occurs_in_a_modest_sample() -> None:
    _, attrs = render_batch(400, np.random.default_rng(1))
    for key, values in ATTRIBUTES.items():
        seen = {a[key] for a in attrs}
        assert seen == set(values), f"{key}: missing {set(values) - seen}"


def test_the_shape_is_drawn_in_its_colour() -> None:
    from cdissect_shapes.world import COLOURS

    images, attrs = render_batch(60, np.random.default_rng(2))
    for img, a in zip(images, attrs):
        if a["texture"] == "solid":
            target = np.array(COLOURS[a["colour"]])
            close = (np.abs(img.astype(int) - target).sum(-1) < 30).mean()
            assert close > 0.03, a  # even a small shape covers > 3% of the image


def test_probe_folder_has_pngs_and_attribute_csv(tmp_path: Path) -> None:
    root = write_probe_folder(tmp_path / "probe", 6, seed=9)
    with open(root / "attributes.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == [f"shape_{i:06d}.png" for i in range(6)]
    assert list(rows[0]) == ["name", *ATTRIBUTE_COLUMNS]
    assert all((root / r["name"]).is_file() for r in rows)
    assert read_attributes(root) == rows
    with pytest.raises(FileExistsError, match="not empty"):
        write_probe_folder(root, 2, seed=9)


def test_generator_imports_without_torch() -> None:
    code = ("import sys; import cdissect_shapes.generator, cdissect_shapes.scores, cdissect_shapes.demo; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_negative_count_is_refused() -> None:
    with pytest.raises(ValueError, match="n must be"):
        list(generate(-1, 0))
