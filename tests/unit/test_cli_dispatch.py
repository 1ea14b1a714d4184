"""Shard dispatcher: concurrency over endpoints, retries on UNAVAILABLE, waits on busy, clear final failures.

The servers are real gRPC servers on loopback with small Embedder servicers whose behaviour
(fail N times, reject, hang) each test sets; the dispatcher talks to them through real channels.
"""
from __future__ import annotations

import socket
import threading
from concurrent import futures

import grpc
import pytest
from cdissect.v1 import common_pb2, embedder_pb2, embedder_pb2_grpc
from cdissect_common.retry import RetryPolicy

from cdissect_cli.dispatch import ShardDispatcher, ShardFailure, ShardTask


class FlakyEmbedder(embedder_pb2_grpc.EmbedderServicer):
    """Answers EmbedImageShard with a ref naming the server; fails the first `fail` calls."""

    def __init__(self, name: str, fail: int = 0, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        self.name, self.fail, self.code = name, fail, code
        self.calls = 0
        self.lock = threading.Lock()

    def EmbedImageShard(self, request, context):  # noqa: N802 - gRPC method name
        with self.lock:
            self.calls += 1
            failing = self.calls <= self.fail
        if failing:
            context.abort(self.code, f"{self.name} is not ready")
        return embedder_pb2.EmbedResponse(embeddings=common_pb2.ArtifactRef(key=f"{self.name}/{request.shard.index}"))


@pytest.fixture
def servers():
    started = []

    def start(servicer):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        embedder_pb2_grpc.add_EmbedderServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        started.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in started:
        server.stop(0)


def _tasks(n: int) -> list[ShardTask]:
    return [ShardTask(what=f"image embeddings of shard {i + 1}/{n}",
                      call=lambda stub, t, i=i: stub.EmbedImageShard(
                          embedder_pb2.EmbedImageShardRequest(shard=common_pb2.Shard(index=i)), timeout=t))
            for i in range(n)]


def _dispatcher(addresses, retry_s=5.0, deadline_s=5.0) -> ShardDispatcher:
    channels = []

    def make_stub(address):
        channels.append(grpc.insecure_channel(address))
        return embedder_pb2_grpc.EmbedderStub(channels[-1])

    policy = RetryPolicy(initial_backoff=0.05, max_backoff=0.2, max_total_seconds=retry_s)
    return ShardDispatcher("embedder", addresses, make_stub, deadline_s=deadline_s, policy=policy)


def test_results_in_order_and_both_replicas_used(servers) -> None:
    a, b = FlakyEmbedder("a"), FlakyEmbedder("b")
    results = _dispatcher([servers(a), servers(b)]).run(_tasks(12))
    assert [int(r.embeddings.key.split("/")[1]) for r in results] == list(range(12))
    assert a.calls > 0 and b.calls > 0 and a.calls + b.calls == 12


def test_unavailable_is_retried_until_it_succeeds(servers) -> None:
    flaky = FlakyEmbedder("a", fail=3)
    results = _dispatcher([servers(flaky)]).run(_tasks(2))
    assert len(results) == 2 and flaky.calls == 5


def test_retry_moves_to_the_other_replica(servers) -> None:
    dead = FlakyEmbedder("dead", fail=10**6)
    alive = FlakyEmbedder("alive")
    results = _dispatcher([servers(dead), servers(alive)]).run(_tasks(4))
    assert all(r.embeddings.key.startswith("alive/") for r in results)


def test_rejection_fails_at_once_naming_shard_service_and_cause(servers) -> None:
    bad = FlakyEmbedder("bad", fail=10**6, code=grpc.StatusCode.INVALID_ARGUMENT)
    address = servers(bad)
    with pytest.raises(ShardFailure) as info:
        _dispatcher([address]).run(_tasks(3))
    message = str(info.value)
    assert "image embeddings of shard" in message and "embedder service" in message
    assert address in message and "INVALID_ARGUMENT: bad is not ready" in message
    assert info.value.exit_code == 2  # the service says the request is wrong: bad input
    assert bad.calls <= 2        # no retries; at most the two calls already in flight


def test_a_failure_other_than_a_refusal_exits_1(servers) -> None:
    broken = FlakyEmbedder("broken", fail=10**6, code=grpc.StatusCode.INTERNAL)
    with pytest.raises(ShardFailure) as info:
        _dispatcher([servers(broken)]).run(_tasks(1))
    assert info.value.exit_code == 1 and "INTERNAL" in str(info.value)


def test_a_service_that_never_answers_fails_with_a_deadline_message() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)              # accepts connections, never speaks HTTP/2
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    try:
        with pytest.raises(ShardFailure) as info:
            _dispatcher([address], retry_s=1.0, deadline_s=0.3).run(_tasks(1))
    finally:
        listener.close()
    message = str(info.value)
    assert "shard 1/1" in message and "embedder service" in message and address in message
    assert "DEADLINE_EXCEEDED" in message and "attempts" in message


class CauseEmbedder(FlakyEmbedder):
    """Fails the first `fail` calls with `code` and the trailing `cdissect-cause` a service sends."""

    def __init__(self, name: str, fail: int, code: grpc.StatusCode, cause: str) -> None:
        super().__init__(name, fail, code)
        self.cause = cause

    def EmbedImageShard(self, request, context):  # noqa: N802 - gRPC method name
        with self.lock:
            self.calls += 1
            failing = self.calls <= self.fail
        if failing:
            context.set_trailing_metadata((("cdissect-cause", self.cause),))
            context.abort(self.code, f"{self.name} says {self.cause}")
        return embedder_pb2.EmbedResponse(embeddings=common_pb2.ArtifactRef(key=f"{self.name}/{request.shard.index}"))


def test_a_busy_service_is_waited_on_beyond_the_retry_budget(servers) -> None:
    """Busy answers (the service's in-flight cap) are not an outage: they are retried for up to
    the call's deadline, not the (here tiny) retry budget."""
    busy = CauseEmbedder("a", fail=12, code=grpc.StatusCode.RESOURCE_EXHAUSTED, cause="busy")
    results = _dispatcher([servers(busy)], retry_s=0.01, deadline_s=10.0).run(_tasks(1))
    assert results[0].embeddings.key == "a/0" and busy.calls == 13


def test_a_service_reporting_the_store_down_is_not_retried_and_the_store_is_named(servers) -> None:
    """The service already retried the store for its budget: the CLI reports that once, at once."""
    down = CauseEmbedder("a", fail=10**6, code=grpc.StatusCode.UNAVAILABLE, cause="store-unavailable")
    address = servers(down)
    with pytest.raises(ShardFailure) as info:
        _dispatcher([address], retry_s=5.0).run(_tasks(1))
    assert down.calls == 1
    text = str(info.value)
    assert text.endswith(f"a says store-unavailable (reported by the embedder service at {address})"), text
    assert "is the service running" not in text


def test_a_name_that_does_not_resolve_is_retried_not_refused_as_bad_input() -> None:
    """A DNS failure when the run starts (cluster DNS restarting, a Service with no ready pod yet)
    is an outage: the connection still builds its dispatcher (before: `replica_count` raised, and
    the run exited 2 as bad input) and the calls fail UNAVAILABLE, retried for the retry budget,
    then exit 1."""
    import os

    from cdissect_cli.connection import Connection
    from cdissect_cli.options import ConnectionFlags
    from cdissect_common.config import load_settings

    endpoint = "no-such-host.invalid:50051"
    settings = load_settings(None, overrides={"embedder": endpoint, "retry_timeout": 1.0},
                             env={"CDISSECT_CONFIG": os.devnull}, config_file=None)
    flags = ConnectionFlags(embedder=endpoint, deadline_s=5.0, retry_s=1.0)
    with Connection(settings, flags, need=("embedder",), open_object_store=False) as connection:
        dispatcher = connection.dispatcher("embedder")
        with pytest.raises(ShardFailure) as info:
            dispatcher.run(_tasks(1))
    assert info.value.exit_code == 1 and "UNAVAILABLE" in str(info.value)
