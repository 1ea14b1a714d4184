"""Deterministic generator of the shapes world: 64x64 RGB images of one coloured, textured shape.

Why: the shapes world is a probe set whose every image carries its true attributes, so neuron
labels can be scored against truth offline. numpy + PIL only (no torch): the torch-free CLI
imports this module to write the demo's probe folder.

Same seed -> same images, same PNG bytes, same attributes (PCG64 and PIL are platform-stable).
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .world import BACKGROUND_KINDS, BACKGROUNDS, COLOURS, HPOS, SHAPES, SIZES, TEXTURE_SHADES, TEXTURES, VPOS

IMAGE_SIZE = 64
_SS = 2  # supersampling factor for anti-aliased shape edges
# radius range in pixels (of the 64 px image) for each size word
SIZE_RADII: dict[str, tuple[float, float]] = {"small": (9.0, 12.0), "medium": (14.0, 17.0), "large": (19.5, 23.0)}
ATTRIBUTE_COLUMNS: tuple[str, ...] = (
    "shape", "colour", "texture", "size", "hpos", "vpos", "background", "background_kind", "rotation",
)

_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)


def _unit_polygon(shape: str) -> np.ndarray:
    """Vertices [V,2] of a shape of radius 1 centred at the origin, y pointing down."""
    if shape == "square":
        a = np.deg2rad([45, 135, 225, 315])
        return np.stack([np.cos(a), np.sin(a)], 1) * 0.95
    if shape == "triangle":
        a = np.deg2rad([-90, 30, 150])
        pts = np.stack([np.cos(a), np.sin(a)], 1)
        return pts + np.array([0.0, 0.15])
    if shape == "star":
        a = np.deg2rad(np.arange(10) * 36 - 90)
        r = np.where(np.arange(10) % 2 == 0, 1.05, 0.45)
        return np.stack([np.cos(a) * r, np.sin(a) * r], 1)
    if shape == "cross":
        w, l = 0.34, 1.0
        return np.array([(-w, -l), (w, -l), (w, -w), (l, -w), (l, w), (w, w), (w, l), (-w, l),
                         (-w, w), (-l, w), (-l, -w), (-w, -w)], dtype=np.float64)
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return np.stack([x, y + 2.5], 1) / 16.5
    raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")


_POLYGONS = {s: _unit_polygon(s) for s in SHAPES if s != "circle"}


def _shape_mask(shape: str, cx: float, cy: float, radius: float, rotation_deg: float) -> np.ndarray:
    """Anti-aliased coverage mask [64,64] in [0,1] of one shape."""
    size = IMAGE_SIZE * _SS
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        r = radius * _SS
        draw.ellipse((cx * _SS - r, cy * _SS - r, cx * _SS + r, cy * _SS + r), fill=255)
    else:
        th = math.radians(rotation_deg)
        rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
        pts = (_POLYGONS[shape] @ rot.T) * radius + np.array([cx, cy])
        draw.polygon([(float(x) * _SS, float(y) * _SS) for x, y in pts], fill=255)
    small = canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _texture_pattern(texture: str, rng: np.random.Generator) -> np.ndarray:
    """Boolean [64,64]: True where the texture's contrasting shade replaces the colour."""
    py, px = rng.integers(0, 8, 2).astype(np.float32)
    if texture == "solid":
        return np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    if texture == "striped":
        coord = _YY if rng.random() < 0.5 else _XX
        return ((coord + py) % 6) < 3
    if texture == "dotted":
        dy = (_YY + py) % 6 - 2.5
        dx = (_XX + px) % 6 - 2.5
        return dy * dy + dx * dx < 3.3
    if texture == "checkered":
        return ((np.floor((_YY + py) / 4) + np.floor((_XX + px) / 4)) % 2) == 1
    raise ValueError(f"unknown texture {texture!r}; known textures: {', '.join(TEXTURES)}")


def _background(name: str, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Float [64,64,3] background of one colour, plain, noisy or with a linear gradient."""
    base = np.array(BACKGROUNDS[name], dtype=np.float32)
    img = np.broadcast_to(base, (IMAGE_SIZE, IMAGE_SIZE, 3)).copy()
    if kind == "noise":
        img += rng.normal(0.0, 24.0, (IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    elif kind == "gradient":
        th = rng.uniform(0, 2 * np.pi)
        t = (np.cos(th) * (_XX - 31.5) + np.sin(th) * (_YY - 31.5)) / 45.0  # about [-1, 1]
        img *= (1.0 + 0.4 * t)[..., None]
    elif kind != "plain":
        raise ValueError(f"unknown background kind {kind!r}; known: {', '.join(BACKGROUND_KINDS)}")
    return img


def _third(v: float, words: tuple[str, str, str]) -> str:
    """Which third of the image a coordinate falls in, as a word."""
    return words[min(2, int(v / (IMAGE_SIZE / 3)))]


def render_one(rng: np.random.Generator) -> tuple[np.ndarray, dict[str, str]]:
    """Draw one random scene: (uint8 image [64,64,3], its attributes as words)."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    texture = TEXTURES[rng.integers(len(TEXTURES))]
    size = SIZES[rng.integers(len(SIZES))]
    bg = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    kind = BACKGROUND_KINDS[rng.integers(len(BACKGROUND_KINDS))]
    radius = float(rng.uniform(*SIZE_RADII[size]))
    margin = radius + 1.0
    cx = float(rng.uniform(margin, IMAGE_SIZE - margin))
    cy = float(rng.uniform(margin, IMAGE_SIZE - margin))
    if shape == "heart":  # an upside-down heart stops looking like a heart
        rotation = float(rng.uniform(-35, 35)) % 360
    else:
        rotation = float(rng.uniform(0, 360))

    img = _background(bg, kind, rng)
    mask = _shape_mask(shape, cx, cy, radius, rotation)[..., None]
    pattern = _texture_pattern(texture, rng)[..., None]
    fg = np.where(pattern, np.array(TEXTURE_SHADES[colour], np.float32), np.array(COLOURS[colour], np.float32))
    img = img * (1.0 - mask) + fg * mask
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    attrs = {
        "shape": shape, "colour": colour, "texture": texture, "size": size,
        "hpos": _third(cx, HPOS), "vpos": _third(cy, VPOS),
        "background": bg, "background_kind": kind, "rotation": str(int(round(rotation)) % 360),
    }
    return out, attrs


def render_batch(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[dict[str, str]]]:
    """n scenes as one uint8 array [n,64,64,3] plus their attributes (for trainers: no PNG)."""
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    attrs: list[dict[str, str]] = []
    for i in range(n):
        images[i], a = render_one(rng)
        attrs.append(a)
    return images, attrs


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a uint8 [H,W,3] array as PNG bytes (lossless, deterministic)."""
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def generate(n: int, seed: int) -> Iterator[tuple[str, bytes, dict[str, str]]]:
    """Yield n images of the world as (file name, PNG bytes, attributes), reproducibly from seed."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    for i in range(n):
        image, attrs = render_one(rng)
        yield f"shape_{i:06d}.png", png_bytes(image), attrs


def write_probe_folder(directory: str | Path, n: int, seed: int) -> Path:
    """Write n PNGs plus attributes.csv (column `name`, then the attribute columns) into directory.

    The folder is a probe set in the plain-folder layout; refuses a non-empty folder so that
    stale images never mix with new ones.
    """
    root = Path(directory)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"probe folder {root} is not empty; pass a new or empty folder")
    root.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    for name, data, attrs in generate(n, seed):
        (root / name).write_bytes(data)
        rows.append({"name": name, **attrs})
    with open(root / "attributes.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["name", *ATTRIBUTE_COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    return root


def read_attributes(directory: str | Path) -> list[dict[str, str]]:
    """Read attributes.csv of a probe folder back, in file order (the probe set's order)."""
    path = Path(directory) / "attributes.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; write the folder with write_probe_folder first")
    with open(path, newline="", encoding="utf-8") as fh:
        return [dict(row) for row in csv.DictReader(fh)]
