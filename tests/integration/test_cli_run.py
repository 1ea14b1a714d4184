"""`cdissect run` end to end, and what must not change its results: reruns, a store outage,
replicas, a killed service.

All runs label the same job — resnet18 with fixed-seed random weights, the tiny random CLIP
(OpenAI format, passed as a path), 24 generated images in 12 shards of 2, a 12-word concept
file — so every run's labels must equal those of the first, uninterrupted embedded run.
"""
from __future__ import annotations

import csv
import re
import socket
import time
from pathlib import Path

import pytest
from minio import Minio
from test_cli_support import (
    assert_no_torch, assert_same_labels, integration_conftest, make_env, results, run_args, run_cli, run_dir_of,
    start_cli, stop_process, wait_for, write_probe, write_words)

STAGES = ("probe set", "text embeddings", "image embeddings", "activations", "labels")
N_IMAGES, SHARD = 24, 2
N_SHARDS = N_IMAGES // SHARD


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, tiny_clip_checkpoint: Path):
    """run_args(...) of the shared job, given layers."""
    tmp = tmp_path_factory.mktemp("inputs")
    probe, words = write_probe(tmp / "probe", N_IMAGES, seed=3), write_words(tmp / "words.txt")

    def args(layers: str = "layer3,layer4", *extra: str) -> list[str]:
        return run_args(probe, words, tiny_clip_checkpoint, *extra, layers=layers, shard_size=SHARD)

    args.words = words
    return args


@pytest.fixture(scope="module")
def reference(job, tmp_path_factory: pytest.TempPathFactory):
    """The first run: embedded default (local services, filesystem store). (env, run_dir, process)."""
    env = make_env(tmp_path_factory.mktemp("embedded"))
    proc = run_cli(job(), env, timeout=400)
    return env, run_dir_of(proc), proc


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_embedded_run_writes_the_run_folder_and_stops_its_services(reference, job) -> None:
    env, run_dir, proc = reference
    assert run_dir.parent == Path(env["CDISSECT_RUNS_DIR"]) and run_dir.name.startswith("resnet18_")
    assert "starting local services" in proc.stderr
    logs = Path(env["XDG_CACHE_HOME"]) / "cdissect" / "logs"
    ports = [int(p.stem.rsplit("-", 1)[1]) for p in logs.glob("*.log")]
    assert len(ports) == 3 and not any(_listening(p) for p in ports)

    with (run_dir / "descriptions.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0][:4] == ["layer", "unit", "description", "similarity"]
    assert rows[0][4:6] == ["top2", "top2_similarity"]
    assert rows[0][-4:] == ["dead", "quality_auc", "correlation", "auprc"]
    layers = [r[0] for r in rows[1:]]
    assert layers.count("layer3") == 256 and layers.count("layer4") == 512
    assert {r[2] for r in rows[1:]} <= set(job.words.read_text().split())

    doc = results(run_dir)
    assert doc["version"] == 1 and doc["dataset"]["num_images"] == N_IMAGES
    assert doc["dataset"]["shards"] == N_SHARDS and doc["dataset"]["store_url"].startswith("file://")
    assert doc["concepts"]["words"] == job.words.read_text().split()
    layer4 = doc["layers"][1]
    assert layer4["name"] == "layer4" and len(layer4["activation_keys"]) == N_SHARDS
    assert all(len(u["top"]) == 5 and len(u["top_images"]) == 10 for u in layer4["units"])
    assert all(0 <= i < N_IMAGES for u in layer4["units"] for i in u["top_images"])
    assert all(u["quality"]["auc"] is not None for u in layer4["units"] if not u["dead"])
    # the reference selection on a small probe set: labelled as before, scores noted as too uncertain
    assert all(u["selected_by"] == "similarity" and u["quality"]["correlation"] is not None for u in layer4["units"])
    assert doc["evaluation"]["in_sample"] is True and doc["evaluation"]["heldout_images"] < 20
    assert "held out" in proc.stderr and "flagged low" in proc.stderr
    assert all(layer["scores"]["low"] == layer["scores"]["units_scored"] for layer in doc["layers"])
    assert doc["reused"]["image embeddings"] == {"total": N_SHARDS, "reused": 0, "computed": N_SHARDS}
    assert (run_dir / "job.yaml").read_text().startswith("target_model: resnet18")


@pytest.mark.slow
def test_rerun_reuses_every_artifact(reference, job) -> None:
    env, run_dir, _ = reference
    again = run_cli(job(), env, timeout=400)
    doc = results(run_dir_of(again))
    for stage in STAGES:
        counts = doc["reused"][stage]
        assert counts["computed"] == 0 and counts["reused"] == counts["total"], (stage, counts)
    assert re.search(r"image embeddings\s.*\b0\s.*\b12\b", again.stderr)   # the per-stage reuse table
    assert_same_labels(run_dir_of(again), run_dir)


def _s3_keys(server, prefix: str) -> list[str]:
    client = Minio(server.endpoint, access_key=server.access_key, secret_key=server.secret_key, secure=False)
    try:
        return [o.object_name for o in client.list_objects(server.bucket, prefix=prefix, recursive=True)]
    except Exception:  # noqa: BLE001 - the server is stopped
        return []


@pytest.mark.slow
def test_s3_store_outage_mid_run_waits_and_gives_the_same_labels(reference, job, seaweedfs,
                                                                 tmp_path: Path) -> None:
    prefix = "cli-outage"
    env = make_env(tmp_path, **{**seaweedfs.env(), "CDISSECT_STORE": f"{seaweedfs.store_url}/{prefix}"})
    proc = start_cli(job("layer4"), env)
    try:
        wait_for(lambda: (_s3_keys(seaweedfs, f"{prefix}/activations/")
                          or _s3_keys(seaweedfs, f"{prefix}/embeddings/image/")), 300, "the first shard artifact in S3")
        seaweedfs.stop()
        time.sleep(10)
        assert proc.poll() is None, "the run gave up during the store outage"
        seaweedfs.start()
        out, err = proc.communicate(timeout=300)
    finally:
        seaweedfs.start()
        stop_process(proc)
    assert proc.returncode == 0, f"the run failed after the outage:\n{out}\n{err[-4000:]}"
    assert_no_torch(env)
    run_dir = Path(out.split("run folder: ", 1)[1].splitlines()[0])
    assert results(run_dir)["dataset"]["store_url"].rstrip("/") == f"{seaweedfs.store_url}/{prefix}"
    assert len(_s3_keys(seaweedfs, f"{prefix}/activations/")) == N_SHARDS
    assert_same_labels(run_dir, reference[1], "layer4")


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory):
    """embedder, labeler and two activations replicas on their own filesystem store."""
    conftest = integration_conftest()
    store = f"file://{tmp_path_factory.mktemp('replica-store')}"
    logs = tmp_path_factory.mktemp("replica-logs")
    env = {"CDISSECT_STORE": store}
    handles = {name: conftest.launch_service(svc, env, logs, wait=False)
               for name, svc in (("embedder", "embedder"), ("labeler", "labeler"),
                                 ("act_a", "activations"), ("act_b", "activations"))}
    try:
        for handle in handles.values():
            handle.wait_serving(240)
        yield store, handles
    finally:
        for handle in handles.values():
            handle.kill()


def _endpoint_args(handles: dict, activations: str) -> list[str]:
    return ["--embedder", handles["embedder"].endpoint, "--labeler", handles["labeler"].endpoint,
            "--activations", activations]


def _images_done(handle) -> float:
    match = re.search(r'^cdissect_images_total\{service="activations"\} ([0-9.e+]+)$', handle.metrics_text(), re.M)
    return float(match.group(1)) if match else 0.0


@pytest.mark.slow
def test_two_replicas_share_the_shards(reference, job, services, tmp_path: Path) -> None:
    store, handles = services
    env = make_env(tmp_path, CDISSECT_STORE=store)
    both = f"{handles['act_a'].endpoint},{handles['act_b'].endpoint}"
    proc = run_cli([*job("layer4"), *_endpoint_args(handles, both)], env)
    assert "starting local services" not in proc.stderr
    done_a, done_b = _images_done(handles["act_a"]), _images_done(handles["act_b"])
    assert done_a > 0 and done_b > 0 and done_a + done_b == N_IMAGES
    assert_same_labels(run_dir_of(proc), reference[1], "layer4")


@pytest.mark.slow
def test_sigkill_of_activations_mid_run_then_rerun_resumes_with_identical_labels(
        reference, job, services, tmp_path: Path) -> None:
    store, handles = services
    env = make_env(tmp_path, CDISSECT_STORE=store)
    activations_dir = Path(store[len("file://"):]) / "activations"
    before = len(list(activations_dir.rglob("*.safetensors")))
    victim = handles["act_a"]
    args = [*job("layer3"), *_endpoint_args(handles, victim.endpoint), "--retry-timeout", "3"]
    proc = start_cli(args, env)
    try:
        wait_for(lambda: len(list(activations_dir.rglob("*.safetensors"))) > before, 300,
                 "the first layer3 activation artifact")
        victim.kill()
        out, err = proc.communicate(timeout=120)
    finally:
        stop_process(proc)
    assert_no_torch(env)
    assert proc.returncode != 0, "the run finished before the activations service was killed"
    assert re.search(r"activations \(resnet18: layer3\) of shard \d+/12 .* failed on the activations service "
                     rf"at {re.escape(victim.endpoint)}", err.replace("\n", " ")), err[-3000:]
    assert "UNAVAILABLE" in err and "Traceback" not in err

    finished = len(list(activations_dir.rglob("*.safetensors"))) - before
    assert 0 < finished < N_SHARDS
    resumed = run_cli([*job("layer3"), *_endpoint_args(handles, handles["act_b"].endpoint)], env)
    counts = results(run_dir_of(resumed))["reused"]["activations"]
    assert counts["reused"] == finished and counts["computed"] == N_SHARDS - finished
    assert_same_labels(run_dir_of(resumed), reference[1], "layer3")


@pytest.mark.slow
def test_an_activations_service_that_never_answers_fails_naming_call_service_and_cause(
        job, services, tmp_path: Path) -> None:
    store, handles = services
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)                       # accepts connections, never speaks gRPC
    address = f"127.0.0.1:{silent.getsockname()[1]}"
    env = make_env(tmp_path, CDISSECT_STORE=store)
    try:
        proc = run_cli([*job("layer2"), *_endpoint_args(handles, address), "--deadline", "1",
                        "--retry-timeout", "2"], env, expect=1)
    finally:
        silent.close()
    message = " ".join(proc.stderr.split())
    # The run's first activations call is the target check (before any shard is sent).
    assert re.search(rf"checking target 'resnet18' \(layers layer2\) failed on the activations "
                     rf"service at {re.escape(address)} after \d+ attempts: DEADLINE_EXCEEDED", message), message
    assert "starting local services" not in proc.stderr and "Traceback" not in proc.stderr
