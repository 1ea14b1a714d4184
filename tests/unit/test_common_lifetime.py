"""cdissect_common.lifetime: the parent-pid watchdog (the portable fallback of the death signal)."""
from __future__ import annotations

import threading

from cdissect_common.lifetime import ParentWatch


def test_watchdog_fires_once_when_the_parent_changes() -> None:
    parent = [4242]
    calls: list[int] = []
    watch = ParentWatch(4242, lambda: calls.append(1), getppid=lambda: parent[0])
    assert not watch.check() and calls == []
    parent[0] = 1  # re-parented to init: the parent exited
    assert watch.check() and watch.check()
    assert calls == [1]


def test_watchdog_thread_notices_within_its_interval() -> None:
    parent = [4242]
    fired = threading.Event()
    watch = ParentWatch(4242, fired.set, interval=0.01, getppid=lambda: parent[0]).start()
    try:
        assert not fired.wait(0.1)
        parent[0] = 1
        assert fired.wait(2.0)
    finally:
        watch.stop()
