"""Container HEALTHCHECK: is the cdissect service in this container SERVING?

Asks the standard grpc.health.v1 service (exempt from auth) for the service's health name.
Exit 0 when SERVING, 1 otherwise, with one line saying why.

  python healthcheck.py --service cdissect.v1.Labeler --port 50053

The port is CDISSECT_PORT when that is set (the service listens there), else --port. When the
service runs with TLS (CDISSECT_TLS_CERT set), the probe connects to `localhost` over TLS and
trusts CDISSECT_TLS_CA, or the server certificate itself when no CA is given.
"""
from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _channel(target: str) -> grpc.Channel:
    cert = os.environ.get("CDISSECT_TLS_CERT", "")
    if not cert:
        return grpc.insecure_channel(target)
    with open(os.environ.get("CDISSECT_TLS_CA") or cert, "rb") as handle:
        roots = handle.read()
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=roots))


def check(service: str, port: int, host: str = "127.0.0.1", timeout: float = 3.0) -> tuple[bool, str]:
    """(serving?, explanation) for one health check call."""
    if os.environ.get("CDISSECT_TLS_CERT"):
        host = "localhost"
    target = f"{host}:{port}"
    try:
        with _channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError as exc:
        return False, f"{service} at {target}: {exc.code().name}: {exc.details()}"
    except OSError as exc:
        return False, f"{service} at {target}: cannot read the TLS certificate: {exc}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{service} at {target}: {status}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service", required=True, help="health service name, e.g. cdissect.v1.Embedder")
    parser.add_argument("--port", type=int, required=True, help="gRPC port when CDISSECT_PORT is not set")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds")
    args = parser.parse_args(argv)
    env_port = os.environ.get("CDISSECT_PORT", "").strip()
    if env_port and not env_port.isdigit():
        print(f"CDISSECT_PORT must be a port number, got {env_port!r}", file=sys.stderr)
        return 1
    ok, why = check(args.service, int(env_port) if env_port else args.port, args.host, args.timeout)
    print(why, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
