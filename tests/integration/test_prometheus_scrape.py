"""A real Prometheus (Debian package) scrapes a real cdissect service using the scrape
configuration the Kubernetes manifests deploy (deploy/k8s/base/prometheus/prometheus.yml):
same job names and metrics path, dns_sd targets rewritten to loopback, interval shortened."""
from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
from pathlib import Path

import pytest
import yaml
from cdissect_common.config import SERVICE_DEFAULTS

from tests.conftest import free_port
from deploy.rehearse.prometheus import api, loopback_config

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRAPE_CONFIG = REPO_ROOT / "deploy" / "k8s" / "base" / "prometheus" / "prometheus.yml"


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"{program} is not installed; `make install` installs the Debian package prometheus "
                    f"(or: apt-get install -y --no-install-recommends prometheus)")
    return path


def test_deployed_scrape_config_passes_promtool() -> None:
    proc = subprocess.run([need("promtool"), "check", "config", str(SCRAPE_CONFIG)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_prometheus_finds_cdissect_series_of_a_running_labeler(start_service, tmp_path: Path) -> None:
    prometheus = need("prometheus")
    labeler = start_service("labeler", env={"CDISSECT_STORE": f"file://{tmp_path / 'store'}"})
    assert "cdissect_" in labeler.metrics_text()
    # The other services are not started (each loads torch): their jobs must exist and be down.
    targets = {f"cdissect-{name}": f"127.0.0.1:{free_port()}" for name in SERVICE_DEFAULTS}
    targets["cdissect-labeler"] = f"127.0.0.1:{labeler.metrics_port}"
    address = f"127.0.0.1:{free_port()}"
    config = tmp_path / "prometheus.yml"
    shipped = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config.write_text(yaml.safe_dump(loopback_config(shipped, lambda job, _kind, _entry: [targets.get(job, address)],
                                                     interval="1s")))
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address={address}"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://{address}"
    try:
        deadline = time.monotonic() + 30
        series: list = []
        while time.monotonic() < deadline and not series:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited with {proc.returncode}:\n{(tmp_path / 'prometheus.log').read_text()}")
            try:
                series = api(base, "/api/v1/query", query='{__name__=~"cdissect_.+", job="cdissect-labeler"}')["result"]
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.5)
        assert series, f"no cdissect_ series after 30 s:\n{(tmp_path / 'prometheus.log').read_text()[-3000:]}"
        names = {s["metric"]["__name__"] for s in series}
        assert "cdissect_model_loaded" in names and any(n.startswith("cdissect_shards") for n in names), names
        assert all(s["metric"]["service"] == "labeler" for s in series)
        assert {s["metric"]["instance"] for s in series} == {targets["cdissect-labeler"]}

        active = api(base, "/api/v1/targets")["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in active}
        assert set(health) == {*targets, "prometheus"}
        assert health["cdissect-labeler"] == "up"
        for name in ("embedder", "activations"):
            assert health[f"cdissect-{name}"] in {"down", "unknown"}
        assert {t["scrapeUrl"].split("/", 3)[-1] for t in active} == {"metrics"}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
