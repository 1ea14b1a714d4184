"""What the rehearsal changed on the way from manifest to process, and what it could not honour.

Printed at the end, so a reader sees exactly what a passing rehearsal proved.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Ledger:
    """Rewrites (value -> local equivalent), substitutions (a stand-in for something that cannot
    run here) and fields with no process equivalent, each with where it applies."""

    rewrites: list[str] = field(default_factory=list)
    substitutions: list[str] = field(default_factory=list)
    unhonoured: dict[str, list[str]] = field(default_factory=dict)

    def rewrite(self, where: object, old: str, new: str, why: str) -> None:
        """A value of the manifests replaced by its local equivalent."""
        self.rewrites.append(f"{where}: {old!r} -> {new!r} ({why})")

    def substitute(self, what: str) -> None:
        """Something that cannot run here, replaced by a stand-in (said once)."""
        if what not in self.substitutions:
            self.substitutions.append(what)

    def not_honoured(self, what: str, where: object) -> None:
        """A field with no process equivalent (grouped by what it is)."""
        places = self.unhonoured.setdefault(what, [])
        if str(where) not in places:
            places.append(str(where))

    def as_dict(self) -> dict:
        """JSON-ready copy."""
        return {"rewrites": list(self.rewrites), "substitutions": list(self.substitutions),
                "not_honoured": {k: list(v) for k, v in self.unhonoured.items()}}

    def lines(self) -> list[str]:
        """The three sections as printable lines."""
        out = ["rewrites (manifest value -> local equivalent):"]
        out += [f"  {line}" for line in self.rewrites] or ["  (none)"]
        out.append("substitutions (what could not run here, and what ran instead):")
        out += [f"  {line}" for line in self.substitutions] or ["  (none)"]
        out.append("NOT honoured (no process equivalent; only `make up` on a cluster proves these):")
        for what, places in self.unhonoured.items():
            shown = "; ".join(places[:4]) + (f"; and {len(places) - 4} more" if len(places) > 4 else "")
            out.append(f"  {what}: {shown}")
        if not self.unhonoured:
            out.append("  (none)")
        return out
