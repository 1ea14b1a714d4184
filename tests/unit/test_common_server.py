"""cdissect_common.server in-process: status codes from exceptions, error metrics, bearer auth with
grpc.health.v1 exempt, TLS, and health switching. The servicer here raises on purpose."""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cdissect.v1 import labeler_pb2, labeler_pb2_grpc
from cdissect_common.clients import make_channel
from cdissect_common.config import Settings, load_settings
from cdissect_common.errors import invalid_argument
from cdissect_common.server import Registration, ServiceRuntime, ServiceServer
from cdissect_common.store import ObjectNotFoundError


class RaisingLabeler(labeler_pb2_grpc.LabelerServicer):
    """Answers LabelLayer according to the requested layer name, to exercise error mapping."""

    def LabelLayer(self, request: labeler_pb2.LabelLayerRequest, context: grpc.ServicerContext):
        if request.layer == "missing":
            raise ObjectNotFoundError("no object 'labels/x' in file:///s")
        if request.layer == "bad":
            raise invalid_argument("layer 'bad' is bad; use a good one")
        if request.layer == "aborted":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "not yours")
        if request.layer == "crash":
            raise RuntimeError("kaboom")
        return labeler_pb2.LabelLayerResponse(reused=True)


def _settings(tmp_path: Path, **extra: str) -> Settings:
    env = {"CDISSECT_HOST": "127.0.0.1", "CDISSECT_PORT": "0", "CDISSECT_METRICS_PORT": "0",
           "CDISSECT_STORE": f"file://{tmp_path}/store", **extra}
    return load_settings("labeler", env=env, config_file=None)


def _start(settings: Settings, inline_methods: tuple[str, ...] = ()) -> ServiceServer:
    runtime = ServiceRuntime("labeler", settings)
    full = labeler_pb2.DESCRIPTOR.services_by_name["Labeler"].full_name
    return ServiceServer(runtime, [Registration(RaisingLabeler(), labeler_pb2_grpc.add_LabelerServicer_to_server,
                                                full, inline_methods)])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServiceServer]:
    srv = _start(_settings(tmp_path, CDISSECT_AUTH_TOKEN="tok"))
    yield srv
    srv.stop(grace=0)


def _client(server: ServiceServer, token: str | None) -> grpc.Channel:
    settings = load_settings(env={"CDISSECT_AUTH_TOKEN": token} if token else {}, config_file=None)
    return make_channel(f"127.0.0.1:{server.port}", settings)


@pytest.mark.parametrize("layer,code,needle", [
    ("missing", grpc.StatusCode.NOT_FOUND, "no object 'labels/x'"),
    ("bad", grpc.StatusCode.INVALID_ARGUMENT, "use a good one"),
    ("aborted", grpc.StatusCode.PERMISSION_DENIED, "not yours"),
    ("crash", grpc.StatusCode.INTERNAL, "RuntimeError: kaboom"),
])
def test_exceptions_become_status_codes(server: ServiceServer, layer: str, code: grpc.StatusCode,
                                        needle: str) -> None:
    stub = labeler_pb2_grpc.LabelerStub(_client(server, "tok"))
    with pytest.raises(grpc.RpcError) as info:
        stub.LabelLayer(labeler_pb2.LabelLayerRequest(layer=layer), timeout=10)
    assert info.value.code() == code and needle in info.value.details()
    errors = server.runtime.metrics.rpc_errors.labels("labeler", "LabelLayer", code.name)
    assert errors._value.get() == 1


def test_auth_required_but_health_exempt(server: ServiceServer) -> None:
    ok = labeler_pb2_grpc.LabelerStub(_client(server, "tok")).LabelLayer(labeler_pb2.LabelLayerRequest(layer="x"),
                                                                         timeout=10)
    assert ok.reused
    for token in (None, "nope"):
        with pytest.raises(grpc.RpcError) as info:
            labeler_pb2_grpc.LabelerStub(_client(server, token)).LabelLayer(labeler_pb2.LabelLayerRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    health = health_pb2_grpc.HealthStub(_client(server, None))
    check = health.Check(health_pb2.HealthCheckRequest(service="cdissect.v1.Labeler"), timeout=10)
    assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
    server.runtime.set_serving(True)
    check = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    assert server.runtime.metrics.rpc_errors.labels("labeler", "LabelLayer", "UNAUTHENTICATED")._value.get() == 2


def test_made_up_methods_share_one_metrics_label(server: ServiceServer) -> None:
    """Tokenless calls to invented method paths must not add a series per path to /metrics."""
    channel = _client(server, None)
    for i in range(30):
        call = channel.unary_unary(f"/junk.Service{i}/Method{i}", request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as info:
            call(b"", timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    methods = {sample.labels["method"] for metric in server.runtime.metrics.rpc_errors.collect()
               for sample in metric.samples}
    stages = {sample.labels["stage"] for metric in server.runtime.metrics.stage_duration.collect()
              for sample in metric.samples}
    assert methods == {"unknown"} and stages == {"rpc_unknown"}
    assert server.runtime.metrics.rpc_errors.labels("labeler", "unknown", "UNAUTHENTICATED")._value.get() == 30


def test_stop_reports_not_serving_and_closes(tmp_path: Path) -> None:
    srv = _start(_settings(tmp_path))
    srv.runtime.set_serving(True)
    srv.stop(grace=1)
    status = srv.runtime.health.Check(health_pb2.HealthCheckRequest(service="cdissect.v1.Labeler"), None).status
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
    with pytest.raises(grpc.RpcError) as info:
        labeler_pb2_grpc.LabelerStub(channel).LabelLayer(labeler_pb2.LabelLayerRequest(), timeout=2)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_stop_counts_inline_calls_still_running_after_the_grace(tmp_path: Path) -> None:
    """An inline call still running when the grace is over is abandoned like a shard call: stop()
    counts it, so run_service exits at once instead of waiting for its thread (before, only
    shard calls were counted and the process waited)."""
    import threading

    release, entered = threading.Event(), threading.Event()

    class SlowLabeler(labeler_pb2_grpc.LabelerServicer):
        def LabelLayer(self, request, context):
            entered.set()
            release.wait(30)
            return labeler_pb2.LabelLayerResponse()

    runtime = ServiceRuntime("labeler", _settings(tmp_path))
    full = labeler_pb2.DESCRIPTOR.services_by_name["Labeler"].full_name
    srv = ServiceServer(runtime, [Registration(SlowLabeler(), labeler_pb2_grpc.add_LabelerServicer_to_server, full,
                                               ("LabelLayer",))])
    stub = labeler_pb2_grpc.LabelerStub(grpc.insecure_channel(f"127.0.0.1:{srv.port}"))
    call = stub.LabelLayer.future(labeler_pb2.LabelLayerRequest(), timeout=30)
    try:
        assert entered.wait(10)
        assert srv.stop(grace=0.2) == 1
    finally:
        release.set()
        call.exception()


def test_the_inline_cap_counts_against_the_threads_only_in_a_server_with_inline_methods(tmp_path: Path) -> None:
    """8 threads: enough for 4 shard calls and the health checks (a labeler starts), not for 4
    shard calls plus 48 inline ones (an embedder-like server is refused, naming the settings)."""
    from cdissect_common.config import ConfigError

    settings = _settings(tmp_path, CDISSECT_MAX_WORKERS="8")
    _start(settings).stop(grace=0)
    with pytest.raises(ConfigError, match=r"CDISSECT_MAX_INFLIGHT_RPCS=4 plus CDISSECT_MAX_INFLIGHT_INLINE=48 "
                                          r".*must be below CDISSECT_MAX_WORKERS=8.*raise CDISSECT_MAX_WORKERS"):
        _start(settings, inline_methods=("LabelLayer",))
    _start(settings.replace(max_inflight_inline=3), inline_methods=("LabelLayer",)).stop(grace=0)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a test certificate")
def test_tls_with_token(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    srv = _start(_settings(tmp_path, CDISSECT_TLS_CERT=str(cert), CDISSECT_TLS_KEY=str(key),
                           CDISSECT_AUTH_TOKEN="tok"))
    try:
        client = load_settings(env={"CDISSECT_TLS_CA": str(cert), "CDISSECT_AUTH_TOKEN": "tok"}, config_file=None)
        stub = labeler_pb2_grpc.LabelerStub(make_channel(f"localhost:{srv.port}", client))
        assert stub.LabelLayer(labeler_pb2.LabelLayerRequest(layer="x"), timeout=10).reused
        plain = labeler_pb2_grpc.LabelerStub(grpc.insecure_channel(f"127.0.0.1:{srv.port}"))
        with pytest.raises(grpc.RpcError) as info:
            plain.LabelLayer(labeler_pb2.LabelLayerRequest(layer="x"), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        srv.stop(grace=0)


def test_service_main_builds_the_named_service(tmp_path: Path) -> None:
    """`python -m cdissect_<service>` is one call: service_main(name) -> <module>.service.registrations."""
    from cdissect_common.config import ConfigError
    from cdissect_common.server import build_from_module, service_main

    runtime = ServiceRuntime("labeler", _settings(tmp_path))
    regs, warmup = build_from_module("labeler")(runtime)
    assert [r.full_name for r in regs] == ["cdissect.v1.Labeler"] and callable(warmup)
    with pytest.raises(ConfigError, match="unknown service 'labeller'"):
        service_main("labeller")


class _AbortingContext:
    """The part of grpc.ServicerContext the work gate uses: abort raises, as gRPC's does."""

    def __init__(self) -> None:
        self.trailing = ()

    def set_trailing_metadata(self, metadata: tuple) -> None:
        self.trailing = metadata

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise RuntimeError(f"{code.name}: {details}")


def test_inline_calls_have_their_own_cap_beside_the_shard_calls() -> None:
    """Shard calls filling max_inflight_rpcs must not refuse inline calls (they batch together
    under max_inflight_inline), and each cap's busy answer names its own setting."""
    from cdissect_common.server import WorkGate, WorkGateInterceptor

    shard_gate, inline_gate = WorkGate(1), WorkGate(2, "max_inflight_inline")
    interceptor = WorkGateInterceptor(shard_gate, "embedder", inline_gate, ["/cdissect.v1.Embedder/EmbedTexts"])

    def handler_for(method: str) -> grpc.RpcMethodHandler:
        plain = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
        return interceptor.intercept_service(lambda details: plain, SimpleNamespace(method=method))

    shard = handler_for("/cdissect.v1.Embedder/EmbedShard")
    inline = handler_for("/cdissect.v1.Embedder/EmbedTexts")
    assert shard_gate.enter()                                  # the one shard slot is taken
    with pytest.raises(RuntimeError, match=r"RESOURCE_EXHAUSTED: .*max_inflight_rpcs"):
        shard.unary_unary("x", _AbortingContext())
    assert inline.unary_unary("x", _AbortingContext()) == "x"  # before: refused as busy
    assert inline_gate.enter() and inline_gate.enter()         # both inline slots taken
    context = _AbortingContext()
    with pytest.raises(RuntimeError, match=r"RESOURCE_EXHAUSTED: .*max_inflight_inline"):
        inline.unary_unary("x", context)
    assert context.trailing == (("cdissect-cause", "busy"),)
