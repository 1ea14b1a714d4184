"""Real servers on loopback for integration tests: the three services as processes, and SeaweedFS.

Reusable pieces (import them or use the fixtures):

- ``launch_service(name, env, log_dir)`` → ``ServiceHandle``: starts ``python -m cdissect_<name>``
  on free loopback ports with a clean ``CDISSECT_*`` environment plus ``env``. The handle has
  ``.endpoint`` ("127.0.0.1:PORT"), ``.port``, ``.metrics_port``, ``.wait_serving()``,
  ``.channel(token)``, ``.stub(token)``, ``.metrics_text()``, ``.log()``, ``.terminate()``
  (SIGTERM, returns the exit code), ``.kill()`` (SIGKILL).
- ``start_service`` fixture: ``start_service(name, env=None, wait=True)``; every process it
  started is killed after the test.
- ``fs_store_url`` (session): a ``file://`` store folder for the shared services.
- ``fs_services`` (session): embedder, activations and labeler on ``fs_store_url`` with the
  bearer token ``TEST_TOKEN``, SERVING, the tiny CLIP's folder as model folder (``model_dirs``);
  a dict name → ServiceHandle shared by all tests.
- ``run_pipeline(stubs, store, clip_path)``: one dissection through the RPCs (register a
  generated dataset, embed shards and concepts, resnet18 activations, label layer1);
  ``shard_with_bad_image(store)``: a shard holding a truncated JPEG.
- ``seaweedfs`` (session, defined in tests/conftest.py for every test folder): a real S3
  server (``weed mini``), see ``SeaweedFS`` there.
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from cdissect.v1 import activations_pb2, common_pb2, embedder_pb2, labeler_pb2
from cdissect_common.manifest import ImageSource, register_dataset
from cdissect_common.store import ObjectStore, sha256_hex
from deploy.rehearse.loopback import wait_serving
from tests.conftest import SeaweedFS, free_port, make_probe_images  # noqa: F401 (re-exported)

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
TEST_TOKEN = "integration-test-token"
SERVICES = ("embedder", "activations", "labeler")


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ without CDISSECT_* (so a developer's settings cannot leak in), one CPU thread,
    no user config file, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDISSECT_")}
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                "CDISSECT_CONFIG": os.devnull, "CDISSECT_DEVICE": "cpu", "CDISSECT_HOST": "127.0.0.1"})
    env.update(extra or {})
    return env


@dataclass
class ServiceHandle:
    """A service process started by a test."""

    name: str
    proc: subprocess.Popen
    port: int
    metrics_port: int
    log_path: Path
    env: dict[str, str] = field(repr=False)
    _channels: list[grpc.Channel] = field(default_factory=list, repr=False)

    @property
    def endpoint(self) -> str:
        """host:port for clients."""
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def channel(self, token: str | None = TEST_TOKEN, options: list | None = None) -> grpc.Channel:
        """A plaintext channel, with the bearer token attached unless ``token`` is None."""
        channel = grpc.insecure_channel(self.endpoint, options=options or [])
        if token:
            from cdissect_common.auth import BearerTokenClientInterceptor

            channel = grpc.intercept_channel(channel, BearerTokenClientInterceptor(token))
        self._channels.append(channel)
        return channel

    def stub(self, token: str | None = TEST_TOKEN):
        """The generated stub of this service on a new channel."""
        from cdissect_common.clients import make_stub

        return make_stub(self.name, self.channel(token))

    def health_status(self, service: str | None = None) -> str:
        """grpc.health.v1 status name for the service's health name ("" = whole server)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from cdissect_common.config import SERVICE_DEFAULTS

        name = SERVICE_DEFAULTS[self.name].health_name if service is None else service
        with grpc.insecure_channel(self.endpoint) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=name), timeout=2)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def wait_serving(self, timeout: float = 90.0) -> None:
        """Block until health says SERVING; fail with the process log if it dies or times out."""
        from cdissect_common.config import SERVICE_DEFAULTS

        wait_serving(self.proc, self.port, SERVICE_DEFAULTS[self.name].health_name, timeout, self.name, self.log)

    def metrics_text(self) -> str:
        """The Prometheus exposition text from /metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL (no cleanup in the process) and reap it."""
        for ch in self._channels:
            ch.close()
        self._channels.clear()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def launch_service(name: str, env: dict[str, str] | None, log_dir: Path, wait: bool = True,
                   timeout: float = 90.0) -> ServiceHandle:
    """Start ``python -m cdissect_<name>`` on free loopback ports (see the module docstring)."""
    full_env = clean_env({"CDISSECT_PORT": str(free_port()), "CDISSECT_METRICS_PORT": str(free_port()),
                          "CDISSECT_SHUTDOWN_GRACE_SECONDS": "60", "CDISSECT_CACHE_DIR": str(log_dir / "weights"),
                          **(env or {})})
    port = int(full_env["CDISSECT_PORT"]) if full_env["CDISSECT_PORT"].isdigit() else 0
    metrics_port = int(full_env["CDISSECT_METRICS_PORT"]) if full_env["CDISSECT_METRICS_PORT"].isdigit() else 0
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([PYTHON, "-m", f"cdissect_{name}"], env=full_env, stdout=log,
                                stderr=subprocess.STDOUT, cwd=str(log_dir))
    handle = ServiceHandle(name, proc, port, metrics_port, log_path, full_env)
    if wait:
        try:
            handle.wait_serving(timeout)
        except Exception:
            handle.kill()
            raise
    return handle


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., ServiceHandle]]:
    """``start_service(name, env=None, wait=True)``; the processes are killed after the test."""
    started: list[ServiceHandle] = []

    def start(name: str, env: dict[str, str] | None = None, wait: bool = True) -> ServiceHandle:
        handle = launch_service(name, env, tmp_path / "logs", wait=wait)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        handle.kill()


@pytest.fixture(scope="session")
def fs_store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A filesystem store shared by the session's services."""
    return f"file://{tmp_path_factory.mktemp('store')}"


@pytest.fixture(scope="session")
def fs_services(fs_store_url: str, tmp_path_factory: pytest.TempPathFactory,
                tiny_clip_checkpoint: Path) -> Iterator[dict[str, ServiceHandle]]:
    """The three services on the filesystem store, with auth (``TEST_TOKEN``), SERVING; the tiny
    CLIP's folder is their operator-configured model folder, so requests may name it by path."""
    log_dir = tmp_path_factory.mktemp("service-logs")
    env = {"CDISSECT_STORE": fs_store_url, "CDISSECT_AUTH_TOKEN": TEST_TOKEN, "CDISSECT_BATCH_SIZE": "16",
           "CDISSECT_MAX_MESSAGE_BYTES": str(4 * 1024 * 1024), "CDISSECT_MODEL_DIRS": str(tiny_clip_checkpoint.parent)}
    handles = {name: launch_service(name, env, log_dir, wait=False) for name in SERVICES}
    try:
        for handle in handles.values():
            handle.wait_serving()
        yield handles
    finally:
        for handle in handles.values():
            handle.kill()


# ---------------------------------------------------------------- one run through the RPCs
CONCEPTS = ["red", "green", "blue", "circle", "square", "dark background"]
LAYERS = ["layer1", "fc"]
TIMEOUT = 120


@dataclass
class PipelineResult:
    """Refs and responses of one pass, for assertions."""

    manifest: common_pb2.DatasetManifest
    image_refs: list[common_pb2.ArtifactRef]
    text_ref: common_pb2.ArtifactRef
    act_refs: dict[str, list[common_pb2.ArtifactRef]]
    labels: labeler_pb2.LabelLayerResponse
    reused: dict[str, int]


def register_probe(store: ObjectStore, name: str, n: int = 20, shard_size: int = 10) -> common_pb2.DatasetManifest:
    """A generated probe set of ``n`` images in shards of ``shard_size``."""
    images = [ImageSource(name=f"{c}/{f}", data=d, labels={"class": c}) for f, d, c in make_probe_images(n)]
    return register_dataset(store, name, images, shard_size=shard_size)


def run_pipeline(stubs: dict, store: ObjectStore, clip_path: str, dataset: str = "probe") -> PipelineResult:
    """Every RPC of one run, in the CLI's order; counts how many outputs were reused."""
    manifest = register_probe(store, dataset)
    reused = {"image": 0, "text": 0, "activations": 0, "labels": 0}
    image_refs = []
    for shard in manifest.shards:
        resp = stubs["embedder"].EmbedImageShard(embedder_pb2.EmbedImageShardRequest(model=clip_path, shard=shard),
                                                 timeout=TIMEOUT)
        image_refs.append(resp.embeddings)
        reused["image"] += int(resp.reused)
    text = stubs["embedder"].EmbedConcepts(embedder_pb2.EmbedConceptsRequest(model=clip_path, concepts=CONCEPTS),
                                           timeout=TIMEOUT)
    reused["text"] += int(text.reused)
    act_refs: dict[str, list[common_pb2.ArtifactRef]] = {layer: [] for layer in LAYERS}
    for shard in manifest.shards:
        resp = stubs["activations"].ComputeShardActivations(activations_pb2.ComputeShardActivationsRequest(
            model="resnet18", weights="none", layers=LAYERS, shard=shard), timeout=TIMEOUT)
        for layer, ref in zip(LAYERS, resp.activations):
            act_refs[layer].append(ref)
        reused["activations"] += resp.reused
    labels = stubs["labeler"].LabelLayer(labeler_pb2.LabelLayerRequest(
        layer="layer1", image_embeddings=image_refs, text_embeddings=text.embeddings, activations=act_refs["layer1"],
        similarity=common_pb2.SimilarityParams(function="soft_wpmi", params={"top_k": 5}), top_concepts=3,
        top_images=4), timeout=TIMEOUT)
    reused["labels"] += int(labels.reused)
    return PipelineResult(manifest, image_refs, text.embeddings, act_refs, labels, reused)


def shard_with_bad_image(store: ObjectStore, good: int = 3) -> common_pb2.Shard:
    """A shard written without the manifest's validation, holding one truncated JPEG
    (as an older or foreign registration could have left it)."""
    members = [(f, d) for f, d, _ in make_probe_images(good, seed=7)]
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (10, 200, 10)).save(buf, "JPEG")
    members.insert(1, ("truncated.jpg", buf.getvalue()[:200]))
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = tar_buf.getvalue()
    ref = store.put(f"datasets/shards/{sha256_hex(data)}.tar", data)
    return common_pb2.Shard(index=0, ref=ref, images=[common_pb2.ImageEntry(name=n, sha256=sha256_hex(d))
                                                      for n, d in members])
