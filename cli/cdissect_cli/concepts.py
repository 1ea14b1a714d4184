"""Concept sets: the word lists neurons are labelled with, by name or by file path.

The six sets of CLIP-Dissect ship inside this package (``available_concept_sets()``):
``20k`` (the default), ``10k``, ``3k``, ``broden``, ``imagenet`` and ``places365``. A file is
one concept per line, used as is (no prompt template, no stripping of spaces), like the reference.

How lines become words, so that labels never shift:

- blank lines (empty or whitespace only) are dropped and counted in ``dropped_blank``; the
  ``words`` list is exactly what gets embedded AND what label indices point into (the reference
  re-reads the file without dropping blanks, so a blank line in the middle shifts its labels);
- a trailing ``\\r`` (Windows line end) is removed;
- duplicates are kept, as in the reference (``broden`` has 44), and listed in ``duplicates`` as
  (word, first index, duplicate index); labels of identical concepts tie, and ties resolve to the
  lower index;
- ``places365`` lines such as ``/a/airfield 0`` become ``airfield`` (category path without the
  ``/x/`` prefix and the class number, ``_`` → space, as the Linear-Explanations follow-up does);
  sub-scenes keep their slash: ``/a/apartment_building/outdoor 8`` → ``apartment building/outdoor``.

``sha256`` is the digest of the words joined by ``\\n`` (UTF-8): it identifies what is embedded,
so two files that yield the same words share text embeddings. This module never imports torch.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

# name -> file shipped in cdissect_cli/data/concept_sets
SHIPPED: dict[str, str] = {
    "20k": "20k.txt",
    "10k": "10k.txt",
    "3k": "3k.txt",
    "broden": "broden_labels_clean.txt",
    "imagenet": "imagenet_labels.txt",
    "places365": "categories_places365.txt",
}
DEFAULT_CONCEPT_SET = "20k"
_PLACES_LINE = re.compile(r"^/[a-z]/(\S+) \d+$")


class ConceptSetError(ValueError):
    """A concept set cannot be used (empty, unreadable, malformed)."""


class UnknownConceptSetError(ConceptSetError, LookupError):
    """Neither a shipped name nor an existing file."""


@dataclass(frozen=True)
class ConceptSet:
    """A loaded concept set: ``words[i]`` is concept i, the index labels refer to."""

    name: str
    words: list[str]
    sha256: str
    dropped_blank: int = 0
    duplicates: list[tuple[str, int, int]] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.words)

    def summary(self) -> str:
        """One line for logs and the CLI: size and what was dropped or duplicated."""
        return (f"concept set {self.name!r}: {len(self.words)} concepts, {self.dropped_blank} blank lines "
                f"dropped, {len(self.duplicates)} duplicates kept ({self.source})")


def available_concept_sets() -> list[str]:
    """Names of the concept sets shipped with cdissect."""
    return list(SHIPPED)


def shipped_path(name: str) -> Path:
    """Filesystem path of a shipped concept-set file."""
    if name not in SHIPPED:
        raise UnknownConceptSetError(_unknown_message(name))
    return Path(str(resources.files("cdissect_cli.data.concept_sets").joinpath(SHIPPED[name])))


def parse_concept_lines(text: str, places365_format: bool = False) -> tuple[list[str], int]:
    """(words, number of blank lines dropped) from a file's text."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()                                    # the final newline is not a blank line
    words: list[str] = []
    blank = 0
    for line in lines:
        line = line[:-1] if line.endswith("\r") else line
        if not line.strip():
            blank += 1
            continue
        if places365_format:
            match = _PLACES_LINE.match(line.strip())
            if match is None:
                raise ConceptSetError(f"line {line!r} is not in the Places365 categories format "
                                      "'/a/airfield 0'; pass the file by path to use its lines as is.")
            line = match.group(1).replace("_", " ")
        words.append(line)
    return words, blank


def find_duplicates(words: list[str]) -> list[tuple[str, int, int]]:
    """(word, index of its first occurrence, index of the repeat) for every repeated word."""
    first: dict[str, int] = {}
    dups: list[tuple[str, int, int]] = []
    for i, w in enumerate(words):
        if w in first:
            dups.append((w, first[w], i))
        else:
            first[w] = i
    return dups


def words_sha256(words: list[str]) -> str:
    """Digest of the word list as embedded (joined by newlines, UTF-8)."""
    return hashlib.sha256("\n".join(words).encode("utf-8")).hexdigest()


def load_concept_set(name_or_path: str | Path) -> ConceptSet:
    """Load a shipped concept set by name, or any text file (one concept per line) by path."""
    key = str(name_or_path)
    if key in SHIPPED:
        path, name, places = shipped_path(key), key, key == "places365"
    else:
        path = Path(key).expanduser()
        if not path.is_file():
            raise UnknownConceptSetError(_unknown_message(key))
        name, places = path.stem, False
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConceptSetError(f"concept file {path} is not UTF-8 text ({exc}); save it as UTF-8.") from exc
    words, blank = parse_concept_lines(text, places365_format=places)
    if not words:
        raise ConceptSetError(f"concept file {path} has no concepts (only blank lines); "
                              "write one concept per line.")
    return ConceptSet(name=name, words=words, sha256=words_sha256(words), dropped_blank=blank,
                      duplicates=find_duplicates(words), source=str(path))


def _unknown_message(key: str) -> str:
    return (f"unknown concept set {key!r}: not a shipped name and no such file. Shipped names: "
            f"{', '.join(SHIPPED)}; or pass the path of a text file with one concept per line.")
