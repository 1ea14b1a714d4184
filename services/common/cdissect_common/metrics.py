"""Prometheus metrics of a service, named as in docs/CONTRACTS.md.

One ``ServiceMetrics`` per process, on its own registry, served over HTTP on the metrics port.
Labels are bounded (service, stage, method, code, outcome, direction): never job, shard or
neuron ids. Stage histograms have buckets from 50 ms to 30 min, because a shard of a large
model on a CPU takes minutes.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

STAGE_DURATION = "cdissect_stage_duration_seconds"
SHARDS = "cdissect_shards_total"
IMAGES = "cdissect_images_total"
RPC_ERRORS = "cdissect_rpc_errors_total"
ARTIFACT_BYTES = "cdissect_artifact_bytes_total"
MODEL_LOADED = "cdissect_model_loaded"
METRIC_NAMES = (STAGE_DURATION, SHARDS, IMAGES, RPC_ERRORS, ARTIFACT_BYTES, MODEL_LOADED)


class ServiceMetrics:
    """The contract's series for one service, pre-labelled with its name."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # prometheus_client appends _total to counters itself: pass the base names.
        self.stage_duration = Histogram(STAGE_DURATION, "Duration of a processing stage (RPCs, load, encode, store).",
                                        ["service", "stage"], buckets=DURATION_BUCKETS, registry=r)
        self.shards = Counter(SHARDS[:-len("_total")], "Shard RPCs by outcome (computed, reused, failed).",
                              ["service", "outcome"], registry=r)
        self.images = Counter(IMAGES[:-len("_total")], "Images processed.", ["service"], registry=r)
        self.rpc_errors = Counter(RPC_ERRORS[:-len("_total")], "RPCs that ended with a non-OK status, by code.",
                                  ["service", "method", "code"], registry=r)
        self.artifact_bytes = Counter(ARTIFACT_BYTES[:-len("_total")], "Bytes read from / written to the store.",
                                      ["service", "direction"], registry=r)
        self.model_loaded = Gauge(MODEL_LOADED, "1 when a model is loaded and warm in this process.",
                                  ["service"], registry=r)
        self.model_loaded.labels(service).set(0)
        self.images.labels(service)
        for direction in ("read", "write"):
            self.artifact_bytes.labels(service, direction)
        for outcome in ("computed", "reused", "failed"):
            self.shards.labels(service, outcome)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a block into the stage histogram."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage_duration.labels(self.service, name).observe(time.perf_counter() - start)

    def shard(self, outcome: str) -> None:
        """Count one shard RPC: computed | reused | failed."""
        self.shards.labels(self.service, outcome).inc()

    def add_images(self, n: int) -> None:
        """Count processed images."""
        self.images.labels(self.service).inc(n)

    def add_bytes(self, direction: str, n: int) -> None:
        """Count store traffic: direction read | write."""
        self.artifact_bytes.labels(self.service, direction).inc(n)

    def error(self, method: str, code: str) -> None:
        """Count an RPC that ended with a non-OK status."""
        self.rpc_errors.labels(self.service, method, code).inc()

    def set_model_loaded(self, loaded: bool) -> None:
        """Flip the model-loaded gauge."""
        self.model_loaded.labels(self.service).set(1 if loaded else 0)

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Serve /metrics over HTTP; returns the bound port (useful with port 0)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http_server = server
        return int(server.server_port)

    def close(self) -> None:
        """Stop the HTTP server if one was started."""
        server = getattr(self, "_http_server", None)
        if server is not None:
            server.shutdown()
            server.server_close()
