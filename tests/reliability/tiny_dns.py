"""A tiny authoritative DNS server on loopback (UDP, A records only, TTL 0) whose records a test
changes while clients run: how a Kubernetes headless Service's records change when pods restart.

gRPC clients reach it with a target that names the DNS server: ``dns://127.0.0.1:PORT/name:port``.
"""
from __future__ import annotations

import socket
import struct
import threading

TYPE_A, CLASS_IN = 1, 1
NXDOMAIN = 3


class TinyDNS:
    """Answers A queries for ``records[name]`` (a list of IPv4 addresses); other names: NXDOMAIN,
    other types of a known name: no answers."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.queries: list[tuple[str, int]] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._closed = threading.Event()
        threading.Thread(target=self._serve, name="tiny-dns", daemon=True).start()

    def target(self, name: str, port: int) -> str:
        """The gRPC target of ``name:port`` resolved through this server."""
        return f"dns://127.0.0.1:{self.port}/{name}:{port}"

    def close(self) -> None:
        """Stop answering."""
        self._closed.set()
        self._sock.close()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                query, client = self._sock.recvfrom(512)
            except OSError:
                return
            try:
                self._sock.sendto(self._answer(query), client)
            except (OSError, IndexError, struct.error):
                continue

    def _answer(self, query: bytes) -> bytes:
        (ident,) = struct.unpack(">H", query[:2])
        offset, labels = 12, []
        while query[offset]:
            length = query[offset]
            labels.append(query[offset + 1:offset + 1 + length].decode("ascii"))
            offset += 1 + length
        qtype, _qclass = struct.unpack(">HH", query[offset + 1:offset + 5])
        question = query[12:offset + 5]
        name = ".".join(labels).lower()
        self.queries.append((name, qtype))
        known = name in self.records
        addresses = list(self.records.get(name, [])) if qtype == TYPE_A else []
        flags = 0x8180 | (0 if known else NXDOMAIN)  # response, recursion desired+available
        header = struct.pack(">HHHHHH", ident, flags, 1, len(addresses), 0, 0)
        answers = b"".join(b"\xc0\x0c" + struct.pack(">HHIH", TYPE_A, CLASS_IN, 0, 4) + socket.inet_aton(a)
                           for a in addresses)
        return header + question + answers
