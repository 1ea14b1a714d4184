"""Shard calls through the CLI's own connection code (`cdissect_cli.connection.Connection`) to real
activations services: a shard long enough to outlast a small retry budget, and a way to kill
the replica computing it mid-shard, as a rolling restart does."""
from __future__ import annotations

import os
import time
from typing import Any

from cdissect.v1 import activations_pb2, common_pb2
from cdissect_cli.connection import Connection
from cdissect_cli.dispatch import ShardTask
from cdissect_cli.options import ConnectionFlags
from cdissect_common.clients import make_channel, make_stub, wait_until_serving
from cdissect_common.config import SERVICE_DEFAULTS, load_settings
from cdissect_common.store import ObjectStore
from tests.integration.conftest import ServiceHandle, register_probe
from tests.integration.test_cli_support import wait_for

LAYER = "layer4"


def long_shard(store: ObjectStore, name: str, images: int) -> common_pb2.Shard:
    """One shard of `images` generated pictures: resnet18 takes seconds over it on one CPU thread
    (about 30-60 images/s on a fast core, a few per second on a loaded one)."""
    return register_probe(store, name, n=images, shard_size=images).shards[0]


def activations_task(shard: common_pb2.Shard) -> ShardTask:
    """The CLI's activations task for one shard (resnet18, fixed-seed random weights)."""
    request = activations_pb2.ComputeShardActivationsRequest(model="resnet18", weights="none", layers=[LAYER],
                                                             shard=shard)
    return ShardTask(what=f"activations of shard {shard.index}",
                     call=lambda stub, timeout: stub.ComputeShardActivations(request, timeout=timeout))


def cli_connection(activations: str, retry_s: float, deadline_s: float = 300.0) -> Connection:
    """The CLI's connection to the given activations endpoint(s), no local services, no store."""
    settings = load_settings(None, overrides={"activations": activations, "retry_timeout": retry_s},
                             env={"CDISSECT_CONFIG": os.devnull}, config_file=None)
    flags = ConnectionFlags(activations=activations, deadline_s=deadline_s, retry_s=retry_s)
    return Connection(settings, flags, need=("activations",), open_object_store=False)


def serving_and_warm(handle: ServiceHandle, host: str = "127.0.0.1") -> None:
    """Wait until the service on host:port is SERVING, then load resnet18 (random weights) in it, so
    its first shard starts computing at once."""
    settings = load_settings(None, env={"CDISSECT_CONFIG": os.devnull}, config_file=None)
    channel = make_channel(f"{host}:{handle.port}", settings)
    try:
        wait_until_serving(channel, SERVICE_DEFAULTS["activations"].health_name, timeout=180)
        make_stub("activations", channel).ListLayers(
            activations_pb2.ListLayersRequest(model="resnet18", weights="none"), timeout=300)
    finally:
        channel.close()


def kill_mid_shard(handle: ServiceHandle, call_started: float, ran_at_least: float, before_kill: Any = None) -> None:
    """SIGKILL `handle` while it computes the shard, once the call has run `ran_at_least` seconds.

    `before_kill()` runs just before (e.g. to point DNS at the replacement). Fails the test if
    the shard finished first: it would prove nothing.
    """
    wait_for(lambda: "ComputeShardActivations shard=0" in handle.log(), 120, "the shard to start")
    while time.monotonic() - call_started < ran_at_least:
        time.sleep(0.02)
    assert "ComputeShardActivations shard=0 done" not in handle.log(), \
        "the shard finished before the kill; make it longer (more images)"
    if before_kill is not None:
        before_kill()
    handle.kill()
