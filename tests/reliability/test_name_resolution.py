"""Kubernetes realities on loopback: a headless Service is a DNS name whose A records are the ready
pods. A tiny DNS server plays the cluster DNS; activations replicas listen on 127.0.0.2 and
127.0.0.3 (same port, as pods do). The CLI's connection must follow the records: spread shards
over every address of one name, and find a restarted pod on its new address mid-run."""
from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cdissect_common.store import open_store
from tests.integration.conftest import free_port, launch_service, register_probe
from tests.reliability.shard_calls import (activations_task, cli_connection, kill_mid_shard, long_shard,
                                          serving_and_warm)
from tests.reliability.tiny_dns import TinyDNS

pytestmark = pytest.mark.slow
NAME = "activations.cdissect.test"
POD_A, POD_B = "127.0.0.2", "127.0.0.3"


@pytest.fixture
def dns() -> Iterator[TinyDNS]:
    server = TinyDNS()
    yield server
    server.close()


def _pod(host: str, port: int, store_url: str, logs: Path):
    """An activations 'pod' on host:port (the same port on every pod, like a Deployment's)."""
    return launch_service("activations", {"CDISSECT_HOST": host, "CDISSECT_PORT": str(port),
                                          "CDISSECT_STORE": store_url, "CDISSECT_BATCH_SIZE": "4"}, logs / host,
                          wait=False)  # one log folder per pod: the log file is named by port


def _shards_done(handle) -> int:
    return len(re.findall(r"ComputeShardActivations shard=\d+ done", handle.log()))


def test_a_restarted_pod_is_found_on_its_new_address_mid_shard(dns: TinyDNS, tmp_path: Path) -> None:
    """Rolling restart: the shard runs on the old pod for longer than the retry budget; the new pod
    comes up on a new address, DNS is updated, the old pod is killed. The same connection (no
    new resolution by the CLI) retries the shard and the new pod computes it. (Before: the CLI
    resolved names once per run and could not even use a DNS-server target.)"""
    url = f"file://{tmp_path / 'store'}"
    store = open_store(url)
    shard = long_shard(store, "rolling", images=192)
    port = free_port()
    old, new = _pod(POD_A, port, url, tmp_path / "logs"), _pod(POD_B, port, url, tmp_path / "logs")
    try:
        for pod, host in ((old, POD_A), (new, POD_B)):
            serving_and_warm(pod, host)
        dns.records[NAME] = [POD_A]
        budget = 3.0
        with cli_connection(dns.target(NAME, port), retry_s=budget) as connection, ThreadPoolExecutor(1) as pool:
            dispatcher = connection.dispatcher("activations")
            started = time.monotonic()
            call = pool.submit(dispatcher.call_one, activations_task(shard), 0, threading.Event())

            def roll() -> None:
                dns.records[NAME] = [POD_B]

            kill_mid_shard(old, started, ran_at_least=budget + 0.5, before_kill=roll)
            response = call.result(timeout=300)
        assert "ComputeShardActivations shard=0 done" in new.log()
        assert list(response.activations[0].shape) == [192, 512]
        assert (NAME, 1) in dns.queries
    finally:
        old.kill()
        new.kill()


def test_one_name_with_two_addresses_spreads_shards_over_both(dns: TinyDNS, tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    store = open_store(url)
    manifest = register_probe(store, "spread", n=16, shard_size=2)
    port = free_port()
    pods = [_pod(host, port, url, tmp_path / "logs") for host in (POD_A, POD_B)]
    try:
        for pod, host in zip(pods, (POD_A, POD_B)):
            serving_and_warm(pod, host)
        dns.records[NAME] = [POD_A, POD_B]
        with cli_connection(dns.target(NAME, port), retry_s=10.0) as connection:
            results = connection.dispatcher("activations").run([activations_task(s) for s in manifest.shards])
        assert len(results) == len(manifest.shards) == 8
        done = [_shards_done(pod) for pod in pods]
        assert all(n > 0 for n in done) and sum(done) == 8, done
    finally:
        for pod in pods:
            pod.kill()
