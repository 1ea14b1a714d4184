"""Progress display of a run: one rich bar per stage, advanced per shard, with reuse counts.

The orchestrator only calls `stage(name, total)`, `advance(name, reused=...)` and `done(name)`;
this module decides how it looks. Bars go to stderr so `--json` output on stdout stays clean,
and on a non-terminal rich prints nothing live, so logs of CI runs are not flooded.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


@dataclass
class StageCount:
    """How many units of work a stage had, how many finished, and how many were reused."""

    total: int
    done: int = 0
    reused: int = 0
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0


class RunProgress:
    """Thread-safe per-stage progress bars and counters (shared by concurrent shard workers)."""

    def __init__(self, console: Console | None = None, enabled: bool = True) -> None:
        self.console = console or Console(stderr=True)
        self.counts: dict[str, StageCount] = {}
        self._lock = threading.Lock()
        self._tasks: dict[str, TaskID] = {}
        self._progress = Progress(
            TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"), TimeElapsedColumn(),
            console=self.console, transient=False, disable=not enabled)

    def __enter__(self) -> "RunProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def stage(self, name: str, total: int) -> None:
        """Open a stage with `total` units of work (shards, layers, ...)."""
        with self._lock:
            self.counts[name] = StageCount(total=total)
            self._tasks[name] = self._progress.add_task(name, total=total, note="")

    def advance(self, name: str, reused: bool = False, note: str | None = None) -> None:
        """One unit of `name` finished; `reused` when its artifact existed already."""
        with self._lock:
            count = self.counts[name]
            count.done += 1
            count.reused += int(reused)
            count.seconds = time.monotonic() - count.started
            text = note if note is not None else (f"{count.reused} reused" if count.reused else "")
            self._progress.update(self._tasks[name], advance=1, note=text)

    def done(self, name: str) -> None:
        """Close a stage; its duration runs from `stage` to its last finished unit."""
        with self._lock:
            count = self.counts[name]
            if count.done == 0:
                count.seconds = time.monotonic() - count.started

    def summary(self) -> dict[str, dict[str, int]]:
        """Per stage: total, computed and reused counts (what results.json records as `reused`)."""
        with self._lock:
            return {name: {"total": c.total, "reused": c.reused, "computed": c.done - c.reused}
                    for name, c in self.counts.items()}

    def timings(self) -> dict[str, float]:
        """Seconds spent per stage."""
        with self._lock:
            return {name: round(c.seconds, 3) for name, c in self.counts.items()}
