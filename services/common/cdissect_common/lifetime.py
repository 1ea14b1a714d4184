"""Process lifetime: a service started by another process dies with it.

The CLI's embedded mode starts the three services as child processes. If the CLI is killed
(SIGKILL, OOM killer, a closed terminal), nothing would stop them: they would keep their models
in memory forever. A service that is given its parent's pid (setting ``parent_pid``, env
``CDISSECT_PARENT_PID``; the CLI sets it, ``cdissect up`` and clusters do not) binds its life to
that parent in two ways:

- on Linux, ``prctl(PR_SET_PDEATHSIG, SIGTERM)``: the kernel sends SIGTERM the moment the parent
  exits (set by the service itself at start, so no ``preexec_fn`` runs between fork and exec);
- everywhere, a watchdog thread that notices the parent is gone (``os.getppid()`` changed),
  for systems without prctl and for the window before prctl took effect.

Note: Linux delivers the death signal when the *thread* that forked the child exits, so the
CLI starts services from its main thread (see ``cdissect_cli.local``).
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

log = logging.getLogger("cdissect.lifetime")
PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent exits; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


class ParentWatch:
    """Calls ``on_gone`` once when this process's parent is no longer ``parent_pid``.

    ``getppid`` is injectable for tests. ``check()`` looks once; ``start()`` looks every
    ``interval`` seconds on a daemon thread.
    """

    def __init__(self, parent_pid: int, on_gone: Callable[[], None], interval: float = 0.5,
                 getppid: Callable[[], int] = os.getppid) -> None:
        self.parent_pid = int(parent_pid)
        self.on_gone = on_gone
        self.interval = interval
        self.getppid = getppid
        self.gone = threading.Event()
        self._stop = threading.Event()

    def check(self) -> bool:
        """True (and ``on_gone`` called, once) when the parent has exited."""
        if not self.gone.is_set() and self.getppid() != self.parent_pid:
            self.gone.set()
            log.warning("parent process %d has exited; stopping", self.parent_pid)
            self.on_gone()
        return self.gone.is_set()

    def start(self) -> "ParentWatch":
        """Look every ``interval`` seconds until the parent is gone or ``stop()`` is called."""
        def loop() -> None:
            while not self._stop.wait(self.interval):
                if self.check():
                    return

        threading.Thread(target=loop, name="parent-watch", daemon=True).start()
        return self

    def stop(self) -> None:
        """End the watchdog thread."""
        self._stop.set()


def bind_to_parent(parent_pid: int, on_gone: Callable[[], None], interval: float = 0.5) -> ParentWatch:
    """Die with ``parent_pid``: the kernel's death signal where available, plus a watchdog.

    The check right after prctl closes the race where the parent exited before the death
    signal was armed (then ``on_gone`` runs at once).
    """
    armed = set_parent_death_signal(signal.SIGTERM)
    log.info("bound to parent process %d (death signal %s, watchdog every %.1fs)", parent_pid,
             "armed" if armed else "unavailable", interval)
    watch = ParentWatch(parent_pid, on_gone, interval)
    if not watch.check():
        watch.start()
    return watch
