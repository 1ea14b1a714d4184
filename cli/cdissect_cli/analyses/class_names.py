"""Class names of a classifier's output layer, and when a neuron label "is" a class name.

`--class-names` takes a file (one class per line, in output-unit order) or the name of a
shipped list (`imagenet`, `places365`, ... through cdissect_cli.concepts). Places365's
category file lines look like `/a/apartment_building/outdoor 12`; they become
`apartment building-outdoor`, the spelling of Broden's scene labels.

Matching (the paper's Tables 2/3 rule, made explicit): after lower-casing, `_` → space,
collapsing spaces and dropping Broden's scene suffix `-s`, a label is a hit for class i when it
equals the whole class string or one of its comma-separated synonyms
(`goldfish, Carassius auratus` accepts `goldfish`).
"""
from __future__ import annotations

import re
from pathlib import Path

from cdissect_cli.errors import CliError

_PLACES_LINE = re.compile(r"^/[a-z]/(\S+?)(?:\s+\d+)?$")


def _places_name(line: str) -> str:
    """`/a/apartment_building/outdoor 12` → `apartment building-outdoor`; other lines unchanged."""
    match = _PLACES_LINE.match(line.strip())
    if not match:
        return line.strip()
    return match.group(1).replace("/", "-").replace("_", " ")


def load_class_names(spec: str) -> list[str]:
    """Class names from a file path or a shipped list name, in unit order."""
    path = Path(spec).expanduser()
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
    else:
        try:
            from cdissect_cli.concepts import load_concept_set
        except ImportError as err:
            raise CliError(f"{spec!r} is not a file, and shipped lists are unavailable ({err}). "
                           f"Pass a file with one class name per line.") from err
        try:
            lines = list(load_concept_set(spec).words)
        except (LookupError, ValueError, OSError) as err:
            raise CliError(f"{spec!r} is neither a file nor a shipped list ({err}). Pass a file "
                           f"with one class name per line, or a list name such as imagenet.") from err
    names = [_places_name(line) for line in lines if line.strip()]
    if not names:
        raise CliError(f"class-name list {spec!r} is empty; it needs one class name per line.")
    return names


def normalize(text: str) -> str:
    """Comparison form: lower case, `_` as space, single spaces, no Broden `-s` suffix."""
    text = " ".join(text.lower().replace("_", " ").split())
    return text[:-2] if text.endswith("-s") else text


def matches(label: str, class_name: str) -> bool:
    """True when `label` names the class (whole string or one comma-separated synonym)."""
    wanted = normalize(label)
    if wanted == normalize(class_name):
        return True
    return any(wanted == normalize(part) for part in class_name.split(","))
