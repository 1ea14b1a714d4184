"""The shapes world's concept set: every attribute word, core and nuisance, one per line.

Every word in it was a bare-word caption in every training batch of the tiny CLIP: words the
CLIP never saw collapse onto one embedding and would win labels spuriously.
"""
from __future__ import annotations

from pathlib import Path

from .world import all_words

CONCEPTS_FILE = Path(__file__).resolve().parent / "concepts.txt"


def concept_set_path() -> Path:
    """Path of the shipped concept set file (one word per line, trailing newline)."""
    if not CONCEPTS_FILE.is_file():
        raise FileNotFoundError(f"{CONCEPTS_FILE} is missing from the cdissect_shapes package; reinstall it")
    return CONCEPTS_FILE


def concept_words() -> list[str]:
    """The words of the shipped concept set, in file order."""
    return [w for w in concept_set_path().read_text(encoding="utf-8").split("\n") if w]


def expected_words() -> list[str]:
    """The words the concept set must hold: all attribute values of the world (for tests)."""
    return all_words()
