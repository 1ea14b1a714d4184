"""cdissect_common.metrics: the contract's series, Prometheus naming, buckets sized for minutes."""
from __future__ import annotations

import urllib.request

from cdissect_common.metrics import DURATION_BUCKETS, METRIC_NAMES, ServiceMetrics


def test_series_names_follow_the_contract() -> None:
    assert METRIC_NAMES == ("cdissect_stage_duration_seconds", "cdissect_shards_total", "cdissect_images_total",
                            "cdissect_rpc_errors_total", "cdissect_artifact_bytes_total", "cdissect_model_loaded")
    assert DURATION_BUCKETS[0] <= 0.05 and DURATION_BUCKETS[-1] >= 1800


def test_scrape_shows_observations() -> None:
    m = ServiceMetrics("activations")
    with m.stage("forward"):
        pass
    m.shard("computed")
    m.add_images(12)
    m.add_bytes("write", 4096)
    m.error("ComputeShardActivations", "INVALID_ARGUMENT")
    m.set_model_loaded(True)
    port = m.serve(0, "127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    finally:
        m.close()
    expected = [
        'cdissect_stage_duration_seconds_bucket{le="1800.0",service="activations",stage="forward"} 1.0',
        'cdissect_shards_total{outcome="computed",service="activations"} 1.0',
        'cdissect_shards_total{outcome="failed",service="activations"} 0.0',
        'cdissect_images_total{service="activations"} 12.0',
        'cdissect_artifact_bytes_total{direction="write",service="activations"} 4096.0',
        'cdissect_rpc_errors_total{code="INVALID_ARGUMENT",method="ComputeShardActivations",service="activations"} 1.0',
        'cdissect_model_loaded{service="activations"} 1.0',
    ]
    for line in expected:
        assert line in text, line
