"""Captions of shapes-world images for training the tiny CLIP, and which images each one fits.

A caption is a set of attribute constraints ({"colour": "red", "shape": "circle"}) plus its text
("a red circle"). Many captions are bare words ("red", "striped", "noise") so that CLIP-Dissect's
raw single-word concepts embed meaningfully. numpy only.
"""
from __future__ import annotations

import numpy as np

from .world import ATTRIBUTES, CORE_ATTRIBUTES

# How often each attribute is chosen for a single-word caption.
_SINGLE_WORD_WEIGHTS: dict[str, float] = {
    "shape": 0.24, "colour": 0.18, "texture": 0.20, "size": 0.08, "hpos": 0.06, "vpos": 0.06,
    "background": 0.10, "background_kind": 0.08,
}
_SW_KEYS = list(_SINGLE_WORD_WEIGHTS)
_SW_P = np.array([_SINGLE_WORD_WEIGHTS[k] for k in _SW_KEYS]) / sum(_SINGLE_WORD_WEIGHTS.values())

Constraints = tuple[tuple[str, str], ...]


def caption_text(constraints: Constraints, article: bool) -> str:
    """Render constraints as an English phrase, attributes in a fixed order."""
    c = dict(constraints)
    if len(c) == 1 and not article:
        return next(iter(c.values()))
    obj = [c[k] for k in ("size", "colour", "texture") if k in c]
    obj.append(c.get("shape", "shape"))
    words = (["a"] if article else []) + obj
    if "background" in c or "background_kind" in c:
        words += ["on", "a"] + [c[k] for k in ("background_kind", "background") if k in c] + ["background"]
    if "vpos" in c or "hpos" in c:
        words += ["at", "the"] + [c[k] for k in ("vpos", "hpos") if k in c]
    return " ".join(words)


def sample_caption(attrs: dict[str, str], rng: np.random.Generator) -> tuple[Constraints, str]:
    """One random true caption of an image with these attributes: (constraints, text)."""
    u = rng.random()
    if u < 0.45:  # a bare word
        key = _SW_KEYS[int(rng.choice(len(_SW_KEYS), p=_SW_P))]
        cons: Constraints = ((key, attrs[key]),)
        return cons, caption_text(cons, article=False)
    if u < 0.75:  # two or three of the core attributes
        keys = [k for k in CORE_ATTRIBUTES if rng.random() < 0.6]
        if len(keys) < 2:
            keys = list(rng.choice(list(CORE_ATTRIBUTES), size=2, replace=False))
    else:  # core attributes plus nuisance ones
        keys = [k for k in CORE_ATTRIBUTES if rng.random() < 0.7]
        keys += [k for k in ATTRIBUTES if k not in CORE_ATTRIBUTES and rng.random() < 0.35]
        if not keys:
            keys = ["shape", "background"]
    cons = tuple((k, attrs[k]) for k in ATTRIBUTES if k in keys)
    return cons, caption_text(cons, article=bool(rng.random() < 0.5))


def bare_word_captions() -> list[tuple[Constraints, str]]:
    """Every attribute word as its own caption (added to every training batch)."""
    return [(((k, v),), v) for k, vals in ATTRIBUTES.items() for v in vals]


def positives(attrs: list[dict[str, str]], captions: list[Constraints]) -> np.ndarray:
    """Boolean [images, captions]: image i satisfies every constraint of caption j."""
    out = np.ones((len(attrs), len(captions)), dtype=bool)
    for j, cons in enumerate(captions):
        for key, value in cons:
            out[:, j] &= np.fromiter((a[key] == value for a in attrs), dtype=bool, count=len(attrs))
    return out
