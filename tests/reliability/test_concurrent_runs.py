"""Runs that share services, store and inputs at the same moment all succeed and agree.

Two identical `cdissect run`s started together (file store and S3) race on every artifact:
the probe set's shards and manifest, the text and image embeddings, the activations and the
labels. Two runs of different target models on one probe set and CLIP race on the shards and
the image embeddings. Every run must succeed, and give the labels a run alone gives.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_cli_support import (
    assert_same_labels, cli_command, results, run_args, run_dir_of, write_probe, write_words)

pytestmark = pytest.mark.slow
N_IMAGES, SHARD = 12, 2


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, tiny_clip_checkpoint: Path):
    tmp = tmp_path_factory.mktemp("inputs")
    return write_probe(tmp / "probe", N_IMAGES, seed=11), write_words(tmp / "words.txt"), tiny_clip_checkpoint


def run_together(jobs: list[tuple[list[str], dict[str, str]]], timeout: float = 600) -> list[Path]:
    """Start every (args, env) CLI run at once; wait for all; each must exit 0. Their run folders."""
    import subprocess

    procs = [subprocess.Popen(cli_command(args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=env["CDISSECT_TEST_CWD"]) for args, env in jobs]
    outcomes = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        outcomes.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    for i, done in enumerate(outcomes):
        assert done.returncode == 0, f"run {i} exited {done.returncode}:\n{done.stdout}\n{done.stderr[-4000:]}"
    return [run_dir_of(done) for done in outcomes]


def assert_artifacts_intact(shared, run_dir: Path) -> None:
    """Every artifact a run points at is stored with bytes that match the digest its ref carries."""
    from cdissect_common.artifacts import find_artifact

    store = shared.open_store()
    for layer in results(run_dir)["layers"]:
        for key in [layer["labels_key"], layer["text_embedding_key"], *layer["activation_keys"],
                    *layer["image_embedding_keys"]]:
            ref = find_artifact(store, key)
            assert ref is not None, key
            store.get(key, sha256=ref.sha256)


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_two_identical_runs_at_once_both_succeed_and_agree(backend: str, inputs, request, tmp_path: Path) -> None:
    shared = request.getfixturevalue("fs_shared" if backend == "file" else "s3_shared")
    probe, words, clip = inputs
    args = run_args(probe, words, clip, layers="layer3,layer4", shard_size=SHARD)
    first, second = run_together([(args, shared.cli_env(tmp_path / "a")), (args, shared.cli_env(tmp_path / "b"))])
    assert_same_labels(first, second)
    assert (first / "descriptions.csv").read_text() == (second / "descriptions.csv").read_text()
    doc = results(first)
    assert doc["dataset"]["num_images"] == N_IMAGES and doc["dataset"]["shards"] == N_IMAGES // SHARD
    assert_artifacts_intact(shared, first)


def test_two_models_on_one_probe_set_at_once(fs_shared, inputs, tmp_path: Path) -> None:
    probe, words, clip = inputs
    resnet = run_args(probe, words, clip, layers="layer4", shard_size=SHARD)
    mobilenet = ["run", "--model", "mobilenet_v3_small", *resnet[3:]]
    mobilenet[mobilenet.index("--layers") + 1] = "features"
    runs = run_together([(resnet, fs_shared.cli_env(tmp_path / "a")), (mobilenet, fs_shared.cli_env(tmp_path / "b"))])
    for run in runs:
        assert_artifacts_intact(fs_shared, run)
    docs = [results(run) for run in runs]
    assert [d["layers"][0]["name"] for d in docs] == ["layer4", "features"]
    # one probe set and one set of image embeddings, shared by both runs
    assert docs[0]["dataset"]["digest"] == docs[1]["dataset"]["digest"]
    assert docs[0]["layers"][0]["image_embedding_keys"] == docs[1]["layers"][0]["image_embedding_keys"]
