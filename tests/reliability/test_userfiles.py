"""Checkpoints travel through the store; services open only their own cache and the operator's
model folders, never a path a client names."""
from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from cdissect.v1 import activations_pb2, embedder_pb2
from cdissect_common import userfiles
from cdissect_common.artifacts import find_artifact
from cdissect_common.store import DigestMismatchError, FilesystemStore, open_store
from cdissect_common.model_specs import looks_like_path, split_checkpoint
from cdissect_common.userfiles import (ModelFileMissingError, ServerPathError, UserFileError, local_copy, server_path,
                                       upload_user_file)
from tests.integration.conftest import launch_service
from tests.integration.test_cli_support import make_env, results, run_args, run_cli, run_dir_of, write_probe, \
    write_words


class CountingStore(FilesystemStore):
    """A real filesystem store that counts puts and gets, to prove what was (not) transferred."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.puts: list[str] = []
        self.gets: list[str] = []
        self.lock = threading.Lock()

    def put(self, key, data, metadata=None, *, if_absent=False):  # noqa: ANN001 - the store interface
        if not (if_absent and self.exists(key)):
            with self.lock:
                self.puts.append(key)
        return super().put(key, data, metadata, if_absent=if_absent)

    def get(self, key, sha256=None):  # noqa: ANN001 - the store interface
        with self.lock:
            self.gets.append(key)
        return super().get(key, sha256)


@pytest.fixture
def big_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A 'checkpoint' of 10 chunks and a bit (chunks made small so the test stays fast)."""
    monkeypatch.setattr(userfiles, "CHUNK_BYTES", 64 * 1024)
    path = tmp_path / "client" / "weights.safetensors"
    path.parent.mkdir()
    path.write_bytes(os.urandom(10 * 64 * 1024 + 123))
    return path


def test_model_strings_split_into_name_and_file() -> None:
    assert split_checkpoint("resnet50:/ckpt/a.pth") == ("resnet50", "/ckpt/a.pth")
    assert split_checkpoint("/ckpt/clip.pt") == ("", "/ckpt/clip.pt")
    assert split_checkpoint("open_clip:ViT-B-32:/w/x.pt") == ("open_clip:ViT-B-32", "/w/x.pt")
    assert split_checkpoint("open_clip:ViT-B-32:laion2b_s34b_b79k") == ("open_clip:ViT-B-32:laion2b_s34b_b79k", None)
    assert split_checkpoint("ViT-B/16") == ("ViT-B/16", None)
    assert split_checkpoint("resnet50:ckpt.pth") == ("resnet50", "ckpt.pth")
    assert not looks_like_path("IMAGENET1K_V1") and not looks_like_path("sentence-transformers/all-mpnet-base-v2")
    assert looks_like_path("~/w.pt") and looks_like_path("weights/w.safetensors")


def test_upload_is_chunked_verified_and_idempotent(big_file: Path, tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "store")
    ref = upload_user_file(store, big_file)
    digest = hashlib.sha256(big_file.read_bytes()).hexdigest()
    assert ref.key == f"userfiles/{digest}.json" and ref.producer["file_sha256"] == digest
    assert ref.producer["name"] == "weights.safetensors" and ref.sha256 == store.stat(ref.key).sha256
    assert len([k for k in store.puts if k.startswith("userfiles/chunks/")]) == 11
    store.puts.clear()
    again = upload_user_file(store, big_file)
    assert again == ref and store.puts == []  # nothing sent twice


def test_local_copy_downloads_once_for_concurrent_callers(big_file: Path, tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "store")
    ref = upload_user_file(store, big_file)
    cache = tmp_path / "service-cache"
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: local_copy(store, ref, cache), range(8)))
    assert len(set(paths)) == 1 and paths[0].read_bytes() == big_file.read_bytes()
    assert paths[0] == cache / "userfiles" / ref.producer["file_sha256"] / "weights.safetensors"
    assert len([k for k in store.gets if k.startswith("userfiles/chunks/")]) == 11
    assert not [p for p in paths[0].parent.iterdir() if p.name.startswith(".download-")]


def test_a_corrupt_chunk_is_caught_and_leaves_no_file(big_file: Path, tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "store")
    ref = upload_user_file(store, big_file)
    chunk = sorted((tmp_path / "store" / "userfiles" / "chunks").iterdir())[3]
    chunk.write_bytes(b"x" + chunk.read_bytes()[1:])
    with pytest.raises(DigestMismatchError):
        local_copy(store, ref, tmp_path / "cache")
    folder = tmp_path / "cache" / "userfiles" / ref.producer["file_sha256"]
    assert not list(folder.iterdir())


def test_refs_that_are_not_user_files_are_refused(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "store")
    store.put("labels/x.safetensors", b"not a manifest")
    bad = store.ref("labels/x.safetensors")
    with pytest.raises(UserFileError, match="is not a user file"):
        local_copy(store, bad, tmp_path / "cache")


def test_server_paths_only_inside_the_model_folders(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "ok.pth").write_bytes(b"w")
    secret = tmp_path / "secret.pth"
    secret.write_bytes(b"s")
    (models / "escape.pth").symlink_to(secret)
    assert server_path(str(models / "ok.pth"), [str(models)]) == models / "ok.pth"
    assert server_path("ok.pth", [str(models)]) == models / "ok.pth"
    messages = []
    for outside in (str(secret), str(tmp_path / "absent.pth"), str(models / ".." / "secret.pth"),
                    str(models / "escape.pth")):
        with pytest.raises(ServerPathError) as info:
            server_path(outside, [str(models)])
        messages.append(str(info.value).replace(outside, "PATH"))
    assert len(set(messages)) == 1 and "CDISSECT_MODEL_DIRS" in messages[0]  # existence is not revealed
    with pytest.raises(ServerPathError, match="CDISSECT_MODEL_DIRS is not set"):
        server_path(str(models / "ok.pth"), [])
    with pytest.raises(ModelFileMissingError, match="not in the model folders"):
        server_path(str(models / "missing.pth"), [str(models)])


@pytest.mark.slow
def test_a_checkpoint_reaches_services_that_cannot_see_the_clients_files(tmp_path: Path,
                                                                         tiny_clip_checkpoint: Path) -> None:
    """The services run with their own HOME, cwd and cache and no model folders; the target and
    CLIP checkpoints live in a client folder they are told nothing about. `cdissect run` uploads
    them; the services load their own verified copies; a request naming the client's path (or
    any path) is refused the same way whether or not the file exists."""
    import torch
    import torchvision

    client = tmp_path / "client-only"
    client.mkdir()
    torch.manual_seed(1)
    target_ckpt = client / "finetuned.pth"
    torch.save(torchvision.models.resnet18().state_dict(), target_ckpt)
    clip_ckpt = client / "my-clip.pt"
    clip_ckpt.write_bytes(tiny_clip_checkpoint.read_bytes())

    store_url = f"file://{tmp_path / 'store'}"
    service_home = tmp_path / "service-home"
    service_home.mkdir()
    handles = {name: launch_service(name, {"CDISSECT_STORE": store_url, "HOME": str(service_home)},
                                    tmp_path / f"{name}-cwd", wait=False)
               for name in ("embedder", "activations", "labeler")}
    try:
        for handle in handles.values():
            handle.wait_serving()
        env = make_env(tmp_path / "cli", CDISSECT_STORE=store_url)
        probe, words = write_probe(tmp_path / "probe", 12), write_words(tmp_path / "words.txt")
        args = run_args(probe, words, clip_ckpt, layers="layer4", shard_size=4)
        args[args.index("--model") + 1] = f"resnet18:{target_ckpt}"
        args[args.index("--weights"):args.index("--weights") + 2] = []
        proc = run_cli([*args, *[x for name, h in handles.items() for x in (f"--{name}", h.endpoint)]], env)
        doc = results(run_dir_of(proc))
        target_sha = hashlib.sha256(target_ckpt.read_bytes()).hexdigest()
        clip_sha = hashlib.sha256(clip_ckpt.read_bytes()).hexdigest()
        assert doc["user_files"]["clip_model"]["file_sha256"] == clip_sha
        for name, sha, file_name in (("activations", target_sha, "finetuned.pth"),
                                     ("embedder", clip_sha, "my-clip.pt")):
            own_copy = handles[name].log_path.parent / "weights" / "userfiles" / sha / file_name
            assert own_copy.is_file() and str(own_copy) in handles[name].log(), name
            assert str(client) not in handles[name].log(), f"the {name} service opened the client's folder"
        act = find_artifact(open_store(store_url), doc["layers"][0]["activation_keys"][0])
        assert act.producer["checkpoint_sha256"] == target_sha  # content keys still carry the digest

        act_stub, emb_stub = handles["activations"].stub(token=None), handles["embedder"].stub(token=None)
        refusals = []
        for path in (target_ckpt, client / "does-not-exist.pth"):
            with pytest.raises(grpc.RpcError) as info:
                act_stub.ListLayers(activations_pb2.ListLayersRequest(model=f"resnet18:{path}"), timeout=60)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            refusals.append(info.value.details().replace(str(path), "PATH"))
            with pytest.raises(grpc.RpcError) as info:
                emb_stub.EmbedTexts(embedder_pb2.EmbedTextsRequest(model=str(path), texts=["red"]), timeout=60)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            refusals.append(info.value.details().replace(str(path), "PATH"))
        assert len(set(refusals[0::2])) == 1 and len(set(refusals[1::2])) == 1, refusals
        assert "CDISSECT_MODEL_DIRS" in refusals[0]

        elsewhere = "/nonexistent-on-this-machine/resnet.pth"  # not here: sent as a server path, refused
        layers = run_cli(["layers", f"resnet18:{elsewhere}", "--activations", handles["activations"].endpoint],
                         env, expect=2)
        said = " ".join(layers.stderr.split())
        assert "sent as a path on the service's machine" in said
        assert "PERMISSION_DENIED" in said and "CDISSECT_MODEL_DIRS" in said
    finally:
        for handle in handles.values():
            handle.kill()


@pytest.mark.slow
def test_a_service_keeps_at_most_max_loaded_models(tmp_path: Path) -> None:
    """Projects that each bring a model cannot make a shared service hold them all."""
    handle = launch_service("activations", {"CDISSECT_STORE": f"file://{tmp_path / 'store'}",
                                            "CDISSECT_MAX_LOADED_MODELS": "1"}, tmp_path / "logs")
    try:
        stub = handle.stub(token=None)
        for model in ("resnet18", "squeezenet1_0", "resnet18"):
            stub.ListLayers(activations_pb2.ListLayersRequest(model=model, weights="none"), timeout=300)
        log = handle.log()
        assert log.count("loading target resnet18 ") == 2 and log.count("loading target squeezenet1_0 ") == 1
        assert "dropped target resnet18 (max_loaded_models=1)" in log
        assert "dropped target squeezenet1_0 (max_loaded_models=1)" in log
    finally:
        handle.kill()
