"""The vocabulary of the shapes world: attribute names, their values, and the words for them.

Every other module (generator, captions, truth, concept set) reads the world's attributes from
here, so adding a colour is a one-line change. numpy-free and torch-free on purpose.
"""
from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart")

# Shape colours (RGB) and the contrasting shade used for the "off" cells of a texture.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 30),
    "green": (40, 175, 45),
    "blue": (35, 65, 215),
    "yellow": (240, 220, 40),
    "purple": (135, 40, 175),
    "orange": (245, 135, 20),
    "white": (248, 248, 248),
    "black": (18, 18, 18),
}
TEXTURE_SHADES: dict[str, tuple[int, int, int]] = {
    "red": (110, 12, 12),
    "green": (15, 85, 20),
    "blue": (150, 165, 250),
    "yellow": (130, 115, 15),
    "purple": (210, 160, 235),
    "orange": (125, 65, 8),
    "white": (70, 70, 70),
    "black": (185, 185, 185),
}
TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted", "checkered")

# Nuisance attributes: background colours are deliberately disjoint from shape colours.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (125, 125, 125),
    "brown": (125, 82, 45),
    "pink": (235, 160, 185),
    "cyan": (70, 200, 210),
}
BACKGROUND_KINDS: tuple[str, ...] = ("plain", "noise", "gradient")
SIZES: tuple[str, ...] = ("small", "medium", "large")
HPOS: tuple[str, ...] = ("left", "center", "right")
VPOS: tuple[str, ...] = ("top", "middle", "bottom")

# attribute column -> its values (each value is also the concept word naming it).
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "texture": TEXTURES,
    "size": SIZES,
    "hpos": HPOS,
    "vpos": VPOS,
    "background": tuple(BACKGROUNDS),
    "background_kind": BACKGROUND_KINDS,
}
CORE_ATTRIBUTES: tuple[str, ...] = ("shape", "colour", "texture")
NUISANCE_ATTRIBUTES: tuple[str, ...] = ("size", "hpos", "vpos", "background", "background_kind")

# The target CNN's fc layer: one unit per class word, in this order (6 + 8 + 4 = 18).
FC_WORDS: tuple[str, ...] = SHAPES + tuple(COLOURS) + TEXTURES
# The target CNN's planted units: unit i responds to exactly this word, by construction
# (pixel fraction of each shape colour, then a stripe detector).
PLANTED_WORDS: tuple[str, ...] = tuple(COLOURS) + ("striped",)


def all_words() -> list[str]:
    """Every attribute value word of the world, core first, in a fixed order."""
    words: list[str] = []
    for key in CORE_ATTRIBUTES + NUISANCE_ATTRIBUTES:
        words.extend(ATTRIBUTES[key])
    if len(set(words)) != len(words):
        raise AssertionError("attribute words must be unique across attributes")
    return words


WORD_TO_ATTRIBUTE: dict[str, str] = {w: k for k, vals in ATTRIBUTES.items() for w in vals}
