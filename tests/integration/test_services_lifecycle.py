"""Process life of a service: NOT_SERVING until the model is warm, SIGTERM drains the shard in
flight, and the services against a real S3 server, including a store outage mid-RPC."""
from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from cdissect.v1 import activations_pb2, common_pb2, embedder_pb2
from cdissect_common import artifacts
from cdissect_common.config import load_settings
from cdissect_common.store import open_store
from tests.integration.conftest import SERVICES, launch_service, register_probe, run_pipeline

pytestmark = pytest.mark.slow


def test_health_not_serving_until_model_warm(start_service, tiny_clip_checkpoint: Path, tmp_path: Path) -> None:
    handle = start_service("embedder", {"CDISSECT_STORE": f"file://{tmp_path}/store",
                                        "CDISSECT_MODEL": str(tiny_clip_checkpoint)}, wait=False)
    seen: list[str] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and (not seen or seen[-1] != "SERVING"):
        assert handle.proc.poll() is None, handle.log()
        try:
            status = handle.health_status()
        except grpc.RpcError:
            continue  # port not open yet
        if not seen or seen[-1] != status:
            seen.append(status)
        time.sleep(0.02)
    assert seen == ["NOT_SERVING", "SERVING"], (seen, handle.log()[-2000:])
    assert 'cdissect_model_loaded{service="embedder"} 1.0' in handle.metrics_text()
    served = handle.stub(token=None).ListModels(common_pb2.ListModelsRequest(), timeout=10).served
    assert served == str(tiny_clip_checkpoint)


def test_sigterm_finishes_the_shard_in_flight(start_service, tmp_path: Path) -> None:
    url = f"file://{tmp_path}/store"
    store = open_store(url)
    manifest = register_probe(store, "drain", n=32, shard_size=32)
    handle = start_service("activations", {"CDISSECT_STORE": url, "CDISSECT_BATCH_SIZE": "8"})
    stub = handle.stub(token=None)
    request = activations_pb2.ComputeShardActivationsRequest(model="resnet18", weights="none", layers=["layer4"],
                                                             shard=manifest.shards[0])
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(stub.ComputeShardActivations, request, timeout=120)
        deadline = time.monotonic() + 60
        while "ComputeShardActivations shard=0" not in handle.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        handle.proc.send_signal(signal.SIGTERM)
        response = future.result(timeout=120)
    assert handle.proc.wait(60) == 0
    log = handle.log()
    assert log.index("received SIGTERM") < log.index("ComputeShardActivations shard=0 done"), log
    assert response.reused == 0 and list(response.activations[0].shape) == [32, 512]
    assert artifacts.get_arrays(store, response.activations[0])["activations"].shape == (32, 512)


def test_services_on_s3_survive_a_store_outage(seaweedfs, tiny_clip_checkpoint: Path, tmp_path: Path) -> None:
    env = {**seaweedfs.env(), "CDISSECT_STORE": f"s3://{seaweedfs.bucket}/services-test",
           "CDISSECT_MODEL_DIRS": str(tiny_clip_checkpoint.parent)}
    handles = {name: launch_service(name, env, tmp_path / "logs", wait=False) for name in SERVICES}
    try:
        for handle in handles.values():
            handle.wait_serving()
        stubs = {name: h.stub(token=None) for name, h in handles.items()}
        store = open_store(env["CDISSECT_STORE"], load_settings(env=env, config_file=None))
        first = run_pipeline(stubs, store, str(tiny_clip_checkpoint))
        assert first.reused == {"image": 0, "text": 0, "activations": 0, "labels": 0}
        keys = store.list("")
        assert first.labels.labels.key in keys and all(r.key in keys for r in first.image_refs)
        assert first.labels.labels.bucket == seaweedfs.bucket and len(first.labels.units) == 64

        seaweedfs.stop()
        restart = threading.Timer(3.0, seaweedfs.start)
        restart.start()
        try:
            started = time.monotonic()
            resp = stubs["embedder"].EmbedConcepts(embedder_pb2.EmbedConceptsRequest(
                model=str(tiny_clip_checkpoint), concepts=["written during an outage"]), timeout=120)
            assert time.monotonic() - started > 2.0 and not resp.reused
        finally:
            restart.join()
            seaweedfs.start()
        assert artifacts.get_arrays(store, resp.embeddings)["embeddings"].shape == (1, 32)
        again = run_pipeline(stubs, store, str(tiny_clip_checkpoint), dataset="probe-again")
        assert again.reused == {"image": 2, "text": 1, "activations": 4, "labels": 1}
    finally:
        for handle in handles.values():
            handle.kill()


@pytest.mark.parametrize("env,needle", [
    ({"CDISSECT_PORT": "fifty"}, "port (from CDISSECT_PORT) must be an integer"),
    ({"CDISSECT_STORE": "ftp://somewhere"}, "unsupported store URL 'ftp://somewhere'"),
])
def test_bad_settings_exit_2_with_one_clear_line(start_service, env: dict, needle: str) -> None:
    handle = start_service("labeler", env, wait=False)
    assert handle.proc.wait(60) == 2
    assert needle in handle.log()
