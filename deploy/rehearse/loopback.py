"""Loopback ports: a free one to hand out, and the ones a process is listening on (Linux /proc)."""
from __future__ import annotations

import os
import socket
from pathlib import Path

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp{,6}


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_sockets() -> dict[str, int]:
    """socket inode -> port of every listening TCP socket of this network namespace."""
    found: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == _LISTEN:
                found[parts[9]] = int(parts[1].rsplit(":", 1)[1], 16)
    return found


def listening_ports(pid: int) -> set[int]:
    """TCP ports the process ``pid`` listens on (empty when it is gone or /proc is unreadable)."""
    sockets = _listening_sockets()
    ports: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return ports
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            port = sockets.get(target[len("socket:["):-1])
            if port is not None:
                ports.add(port)
    return ports
