"""A store object whose read never returns, for tests of calls that hang (no mock: a real
filesystem store whose object file is a named pipe, so `open()` blocks like a dead NFS mount)."""
from __future__ import annotations

import errno
import os
from pathlib import Path


def hang_object(store_root: Path, key: str) -> Path:
    """Make ``key`` of the filesystem store at ``store_root`` an object whose bytes are a FIFO:
    every read of it blocks. (A real put, then its data file, wherever the store keeps it,
    replaced by a named pipe.) Returns the FIFO's path."""
    from cdissect_common.store import FilesystemStore

    FilesystemStore(store_root).put(key, b"placeholder")
    data = Path(os.path.realpath(store_root / key))
    data.unlink()
    os.mkfifo(data)
    return data


def release(path: Path) -> None:
    """Unblock every reader of the FIFO (they read an empty object) and remove it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:  # ENXIO: nobody is reading
        if exc.errno not in (errno.ENXIO, errno.ENOENT):
            raise
    else:
        os.close(fd)
    path.unlink(missing_ok=True)


def readers_blocked(pid: int) -> int:
    """How many threads of process ``pid`` wait in ``open()`` of a FIFO (Linux /proc)."""
    count = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            if (task / "wchan").read_text().strip() in {"wait_for_partner", "fifo_open"}:
                count += 1
        except OSError:
            continue
    return count
