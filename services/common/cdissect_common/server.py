"""The one server bootstrap of every cdissect service.

``run_service`` gives each service the same process shape:
- grpc.health.v1: NOT_SERVING until the service's warm-up (model load) has finished, then
  SERVING; NOT_SERVING again as soon as shutdown begins;
- server reflection (grpcurl / grpcui work without the protos);
- Prometheus metrics over HTTP on the metrics port;
- interceptors: errors by status code and per-RPC timing (outermost), then bearer-token
  auth when a token is configured;
- message-size limits from ``max_message_bytes`` (larger requests get RESOURCE_EXHAUSTED);
- at most ``max_inflight_rpcs`` shard (work) RPCs and ``max_inflight_inline`` inline RPCs (the
  methods a registration names as inline: they wait for batch-mates) at once, together fewer
  than the ``max_workers`` threads (the inline cap counts only where a registration has inline
  methods; ``check_thread_budget``), so a thread is always free for health checks: a call over its
  cap is answered at once with RESOURCE_EXHAUSTED and the trailing metadata
  ``cdissect-cause: busy`` (clients wait and retry);
- TLS when certificate files are configured;
- SIGTERM/SIGINT: NOT_SERVING, refuse new RPCs, let the RPCs in flight (the shard being
  computed) finish within ``shutdown_grace_seconds``, then exit 0; the grace bounds the exit:
  RPCs still running when it is over are abandoned (outputs are published atomically: nothing
  partial is left);
- with ``parent_pid`` set (the CLI's embedded services), the process stops when that parent
  exits (``cdissect_common.lifetime``), without waiting for RPCs nobody will read.
"""
from __future__ import annotations

import importlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .auth import BearerTokenInterceptor, server_credentials
from .config import ENV_VARS, ConfigError, Settings, load_settings, service_defaults
from .errors import ServiceError, status_for, trailing_metadata_for
from .lifetime import bind_to_parent
from .metrics import ServiceMetrics
from .retry import CAUSE_BUSY, CAUSE_METADATA_KEY
from .store import ObjectStore, StoreConfigError, open_store

log = logging.getLogger("cdissect.server")


class ServiceRuntime:
    """What servicers share inside one process: settings, store, metrics, health, device lock."""

    def __init__(self, service: str, settings: Settings, store: ObjectStore | None = None) -> None:
        self.service = service
        self.settings = settings
        self.health_name = service_defaults(service).health_name
        self.metrics = ServiceMetrics(service)
        self.store = store if store is not None else open_store(settings.store, settings)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        # Serialises device work (forward passes) across concurrent RPCs; decoding and store
        # I/O happen outside it, so one request prepares while another computes.
        self.device_lock = threading.Lock()
        self.set_serving(False)

    def set_serving(self, serving: bool) -> None:
        """Report SERVING / NOT_SERVING for the service name and for the whole server ("")."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in (self.health_name, ""):
            self.health.set(name, status)


UNKNOWN_METHOD = "unknown"


def method_paths(service_names: Iterable[str]) -> frozenset[str]:
    """The ``/package.Service/Method`` paths of services known to the default descriptor pool."""
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.Default()
    return frozenset(f"/{name}/{method.name}" for name in service_names
                     for method in pool.FindServiceByName(name).methods)


class ObservabilityInterceptor(grpc.ServerInterceptor):
    """Times every unary RPC into ``stage=rpc_<Method>``, maps exceptions to status codes,
    and counts non-OK results in ``cdissect_rpc_errors_total{method,code}``.

    The method label is the method's name only for the methods this server serves
    (``known_methods``); every other path a caller makes up is counted as ``unknown``, so calls
    that the auth layer refuses cannot add series to /metrics without limit.
    """

    def __init__(self, metrics: ServiceMetrics, known_methods: Iterable[str]) -> None:
        self.metrics = metrics
        self.known_methods = frozenset(known_methods)

    def _method_name(self, full: str) -> str:
        if full not in self.known_methods:
            return UNKNOWN_METHOD
        return full.rsplit("/", 1)[-1] or full

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler],
                          handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        """Wrap unary-unary handlers; streaming ones (health Watch, reflection) pass unchanged."""
        handler = continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.response_streaming:
            return handler
        method = self._method_name(handler_call_details.method or "")
        inner = handler.unary_unary
        metrics = self.metrics

        def behavior(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                response = inner(request, context)
                code = context.code() or grpc.StatusCode.OK
                return response
            except Exception as exc:
                already = context.code()
                if already is not None and already != grpc.StatusCode.OK:
                    code = already  # the handler aborted with its own status
                    raise
                code, message = status_for(exc)
                trailing = trailing_metadata_for(exc)
                if trailing:
                    context.set_trailing_metadata(trailing)
                if code == grpc.StatusCode.INTERNAL:
                    log.exception("%s failed", method)
                else:
                    log.info("%s -> %s: %s", method, code.name, message)
                context.abort(code, message)
            finally:
                metrics.stage_duration.labels(metrics.service, f"rpc_{method}").observe(time.perf_counter() - start)
                if code != grpc.StatusCode.OK:
                    metrics.error(method, code.name)

        return grpc.unary_unary_rpc_method_handler(behavior, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)


BUSY_METADATA = (CAUSE_METADATA_KEY, CAUSE_BUSY)
UNGATED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class WorkGate:
    """Counts the work RPCs in flight and admits at most ``limit`` of them at a time; ``setting``
    names the setting of the limit (for the busy message)."""

    def __init__(self, limit: int, setting: str = "max_inflight_rpcs") -> None:
        self.limit = limit
        self.setting = setting
        self._count = 0
        self._lock = threading.Lock()

    def enter(self) -> bool:
        """Take a slot; False when all ``limit`` slots are taken."""
        with self._lock:
            if self._count >= self.limit:
                return False
            self._count += 1
            return True

    def leave(self) -> None:
        """Give a slot back."""
        with self._lock:
            self._count -= 1

    @property
    def in_flight(self) -> int:
        """Work RPCs running now."""
        with self._lock:
            return self._count


class WorkGateInterceptor(grpc.ServerInterceptor):
    """Admits unary work RPCs through a ``WorkGate`` (``inline_methods`` through ``inline_gate``);
    health checks and reflection pass ungated.

    A call over the cap is answered at once (RESOURCE_EXHAUSTED, trailing metadata
    ``cdissect-cause: busy``) instead of waiting for a thread, so the pool never fills with shard
    work and a liveness probe always finds a free thread.
    """

    def __init__(self, gate: WorkGate, service: str, inline_gate: WorkGate, inline_methods: Iterable[str]) -> None:
        self.gate = gate
        self.service = service
        self.inline_gate = inline_gate
        self.inline_methods = frozenset(inline_methods)

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler],
                          handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        """Wrap unary work handlers in the gate."""
        handler = continuation(handler_call_details)
        method = handler_call_details.method or ""
        if (handler is None or handler.request_streaming or handler.response_streaming
                or method.startswith(UNGATED_PREFIXES)):
            return handler
        inner, service = handler.unary_unary, self.service
        gate = self.inline_gate if method in self.inline_methods else self.gate

        def behavior(request: Any, context: grpc.ServicerContext) -> Any:
            if not gate.enter():
                context.set_trailing_metadata((BUSY_METADATA,))
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"the {service} service is busy: {gate.limit} calls in flight ({gate.setting}); "
                              f"retry later")
            try:
                return inner(request, context)
            finally:
                gate.leave()

        return grpc.unary_unary_rpc_method_handler(behavior, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)


@dataclass
class Registration:
    """One servicer to add: the object, its generated ``add_*_to_server`` and its full service name."""

    servicer: Any
    add_to_server: Callable[[Any, grpc.Server], None]
    full_name: str
    inline_methods: tuple[str, ...] = ()   # short calls that batch together (own cap: max_inflight_inline)


def check_thread_budget(settings: Settings, has_inline: bool) -> None:
    """ConfigError unless the capped calls leave a handler thread free for health checks:
    ``max_inflight_rpcs`` (plus ``max_inflight_inline`` when the server has inline methods, which
    only the embedder has) must be below ``max_workers``."""
    capped = settings.max_inflight_rpcs + (settings.max_inflight_inline if has_inline else 0)
    if capped < settings.max_workers:
        return
    names = f"{ENV_VARS['max_inflight_rpcs']}={settings.max_inflight_rpcs}"
    if has_inline:
        names += f" plus {ENV_VARS['max_inflight_inline']}={settings.max_inflight_inline} (this service's inline calls)"
    raise ConfigError(f"{names} must be below {ENV_VARS['max_workers']}={settings.max_workers}: the threads left "
                      f"over answer health checks while every work slot is busy; raise {ENV_VARS['max_workers']} "
                      f"or lower the cap{'s' if has_inline else ''}")


class ServiceServer:
    """A started gRPC server plus metrics endpoint; ``stop`` drains it gracefully."""

    def __init__(self, runtime: ServiceRuntime, registrations: Iterable[Registration]) -> None:
        settings = runtime.settings
        self.runtime = runtime
        registrations = list(registrations)
        inline = [f"/{reg.full_name}/{name}" for reg in registrations for name in reg.inline_methods]
        check_thread_budget(settings, has_inline=bool(inline))
        known = method_paths([reg.full_name for reg in registrations]
                             + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name])
        interceptors: list[grpc.ServerInterceptor] = [ObservabilityInterceptor(runtime.metrics, known)]
        token = settings.token()
        if token:
            interceptors.append(BearerTokenInterceptor(token))
        self.gate = WorkGate(settings.max_inflight_rpcs)
        self.inline_gate = WorkGate(settings.max_inflight_inline, "max_inflight_inline")
        interceptors.append(WorkGateInterceptor(self.gate, runtime.service, self.inline_gate, inline))
        options = [("grpc.max_receive_message_length", settings.max_message_bytes),
                   ("grpc.max_send_message_length", settings.max_message_bytes),
                   ("grpc.so_reuseport", 0),
                   # Clients ping every 30 s during long shard RPCs (clients.channel_options);
                   # accept that instead of answering GOAWAY "too_many_pings" mid-shard.
                   ("grpc.keepalive_permit_without_calls", 1),
                   ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                   ("grpc.http2.max_ping_strikes", 0)]
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=settings.max_workers,
                                                             thread_name_prefix=runtime.service),
                                  interceptors=interceptors, options=options)
        names = [reflection.SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        for reg in registrations:
            reg.add_to_server(reg.servicer, self.server)
            names.append(reg.full_name)
        health_pb2_grpc.add_HealthServicer_to_server(runtime.health, self.server)
        reflection.enable_server_reflection(names, self.server)
        address = f"{settings.host}:{settings.port}"
        creds = server_credentials(settings)
        try:
            port = (self.server.add_secure_port(address, creds) if creds is not None
                    else self.server.add_insecure_port(address))
        except RuntimeError as exc:
            raise OSError(f"cannot bind the gRPC port {address}: {exc}; choose a free port with "
                          f"{ENV_VARS['port']}") from None
        if port == 0:
            raise OSError(f"cannot bind the gRPC port {address} (in use?); choose a free port with {ENV_VARS['port']}")
        self.port = port
        self.metrics_port = runtime.metrics.serve(settings.metrics_port, settings.host)
        self.server.start()
        log.info("%s listening on %s:%d (metrics :%d, auth %s, tls %s)", runtime.service, settings.host, port,
                 self.metrics_port, "on" if token else "off", "on" if creds else "off")

    def stop(self, grace: float | None = None) -> int:
        """NOT_SERVING, refuse new RPCs, wait for in-flight ones (up to ``grace`` s), close metrics.

        Returns how many work RPCs, shard and inline, are still running after the grace (their
        threads cannot be stopped from Python; ``run_service`` then exits without waiting for them).
        """
        grace = self.runtime.settings.shutdown_grace_seconds if grace is None else grace
        self.runtime.health.enter_graceful_shutdown()
        self.server.stop(grace).wait(grace + 5.0)
        self.runtime.metrics.close()
        return self.gate.in_flight + self.inline_gate.in_flight


def configure_logging() -> None:
    """One log format for every service process."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


Builder = Callable[[ServiceRuntime], tuple[list[Registration], Callable[[], None] | None]]


def run_service(service: str, build: Builder, settings: Settings | None = None) -> int:
    """Run a service until SIGTERM/SIGINT; returns the process exit code (0 on a clean stop).

    ``build`` makes the servicers from the runtime and returns them with a warm-up callable
    (load and exercise the configured model, or None). Warm-up runs after the port is open,
    while health says NOT_SERVING; SERVING follows it. A failed warm-up exits with code 1 so an
    orchestrator restarts the process; unusable settings (bad value, port in use, unreadable
    certificate) exit with code 2 and one log line naming the problem.
    """
    configure_logging()
    stop = threading.Event()
    failed = threading.Event()
    orphaned = threading.Event()
    try:
        settings = settings or load_settings(service)
        if settings.parent_pid:  # first, so a parent that dies while models load is noticed
            bind_to_parent(settings.parent_pid, lambda: (orphaned.set(), stop.set()))
        runtime = ServiceRuntime(service, settings)
        registrations, warmup = build(runtime)
        server = ServiceServer(runtime, registrations)
    except (ConfigError, StoreConfigError, OSError) as exc:
        log.error("%s cannot start: %s", service, exc)
        return 2

    def on_signal(signum: int, _frame: Any) -> None:
        if settings.parent_pid and os.getppid() != settings.parent_pid:
            orphaned.set()  # the death signal of cdissect_common.lifetime
        log.info("received %s: draining (grace %.0fs)", signal.Signals(signum).name,
                 0.0 if orphaned.is_set() else settings.shutdown_grace_seconds)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def warm() -> None:
        try:
            if warmup is not None:
                with runtime.metrics.stage("warmup"):
                    warmup()
        except Exception:  # noqa: BLE001 - any warm-up failure makes the process unusable
            log.exception("warm-up of %s failed", service)
            failed.set()
            stop.set()
            return
        if not stop.is_set():
            runtime.set_serving(True)
            log.info("%s SERVING", service)

    threading.Thread(target=warm, name="warmup", daemon=True).start()
    while not stop.wait(0.5):
        pass
    # An orphan's callers are gone with its parent: nothing is worth waiting for.
    abandoned = server.stop(0.0 if orphaned.is_set() else None)
    code = 1 if failed.is_set() else 0
    if abandoned:
        # Python cannot stop the threads still computing; the process must not wait for them.
        log.warning("%s stopped after its shutdown grace with %d call(s) still running; they are abandoned "
                    "(outputs are published atomically: a rerun computes what they did not finish)",
                    service, abandoned)
        logging.shutdown()
        os._exit(code)
    log.info("%s stopped", service)
    return code


def build_from_module(service: str) -> Builder:
    """The builder of a service: ``<module>.service.registrations(runtime)`` (module from
    SERVICE_DEFAULTS) gives the servicers and the servicer whose ``warmup`` loads the model.
    The import happens inside the builder so start-up errors show in the service log."""
    def build(runtime: ServiceRuntime) -> tuple[list[Registration], Callable[[], None] | None]:
        module = importlib.import_module(f"{service_defaults(service).module}.service")
        regs, servicer = module.registrations(runtime)
        return regs, servicer.warmup
    return build


def service_main(service: str) -> Callable[[], int]:
    """The entry point of a service process (``python -m cdissect_<service>`` and the console
    script): run the service with settings from env/config, return its exit code."""
    service_defaults(service)
    return lambda: run_service(service, build_from_module(service))


__all__ = ["Registration", "ServiceError", "ServiceRuntime", "ServiceServer", "run_service", "configure_logging",
           "build_from_module", "service_main"]
