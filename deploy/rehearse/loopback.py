"""Loopback ports: a free one to hand out, the ones a process is listening on (Linux /proc), and
waiting for a started gRPC server on one to report SERVING (shared with the tests and benchmarks)."""
from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
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


def wait_serving(proc: subprocess.Popen, port: int, health_name: str = "", timeout: float = 90.0,
                 name: str = "the service", log: Callable[[], str] = lambda: "") -> None:
    """Block until the gRPC server that ``proc`` started on 127.0.0.1:``port`` reports SERVING for
    ``health_name`` (grpc.health.v1; "" is the whole server). RuntimeError as soon as the process
    exits, TimeoutError (with the last answer) after ``timeout`` s; both end with the tail of ``log()``."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    last = "not started"
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log()[-4000:]}")
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=health_name), timeout=2).status
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as exc:
                last = exc.code().name
            time.sleep(0.1)
    raise TimeoutError(f"{name} not SERVING after {timeout}s (last {last}):\n{log()[-4000:]}")
