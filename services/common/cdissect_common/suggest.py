"""'Did you mean' hints for error messages that reject an unknown name."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest_hint(name: str, names: Iterable[str], n: int = 5, cutoff: float = 0.5) -> str:
    """' Closest: a, b.' for the names most like `name`, or '' when none is close."""
    close = difflib.get_close_matches(name, list(names), n=n, cutoff=cutoff)
    return f" Closest: {', '.join(close)}." if close else ""
