"""`cdissect demo` glue: the cached probe folder and scoring a run from stored artifacts.

Real shapes-world images and attributes, a real filesystem store with a registered manifest and
activation artifacts, and the shapes world's real score_run; only the labels are written by hand
so the expected scores are known.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cdissect_common.artifacts import put_arrays
from cdissect_common.manifest import ImageSource, register_dataset
from cdissect_common.store import FilesystemStore
from cdissect_shapes.generator import generate, write_probe_folder
from cdissect_shapes.scores import score_run
from cdissect_shapes.world import FC_WORDS, PLANTED_WORDS

from cdissect_cli import demo_command
from cdissect_cli.jobspec import resolve_spec
from cdissect_cli.results import LayerResult, RunResult


def test_probe_folder_is_generated_once_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    def counting_writer(directory, n, seed):
        calls.append(n)
        return write_probe_folder(directory, n, seed)

    first = demo_command.demo_probe_folder(5, 7, counting_writer)
    second = demo_command.demo_probe_folder(5, 7, counting_writer)
    assert first == second and calls == [5]
    assert len(list(first.glob("*.png"))) == 5 and (first / "attributes.csv").is_file()
    assert not list(first.parent.glob(".*partial*"))


def _layer(name: str, ids: np.ndarray, act_keys: list[str]) -> LayerResult:
    k = ids.shape[0]
    return LayerResult(name=name, labels_key="", activation_keys=act_keys, image_embedding_keys=[],
                       text_embedding_key="", concept_ids=ids, scores=np.ones(ids.shape, np.float32),
                       top_images=np.zeros((k, 1), np.int64), dead=np.zeros(k, bool))


def test_scores_come_from_stored_activations_in_dataset_order(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "store")
    images = list(generate(20, seed=11))
    manifest = register_dataset(store, "shapes-test", [ImageSource(name, data=data, labels=attrs)
                                                       for name, data, attrs in images], shard_size=10)
    is_red = np.array([attrs["colour"] == "red" for _, _, attrs in images], dtype=np.float32)
    is_circle = np.array([attrs["shape"] == "circle" for _, _, attrs in images], dtype=np.float32)
    assert 0 < is_red.sum() < 20 and 0 < is_circle.sum() < 20
    conv = np.stack([is_red, is_circle], axis=1)             # unit 0 fires on red, unit 1 on circles
    keys = [put_arrays(store, f"activations/test-{i}.safetensors", {"activations": conv[i * 10:(i + 1) * 10]}).key
            for i in range(2)]

    words = list(FC_WORDS) + ["gray"]
    index = {w: i for i, w in enumerate(words)}
    fc_ids = np.array([[index[w], index["gray"]] for w in FC_WORDS])
    planted_ids = np.array([[index[w], index["gray"]] for w in PLANTED_WORDS])
    conv_ids = np.array([[index["red"], index["gray"]], [index["circle"], index["red"]]])
    result = RunResult(
        spec=resolve_spec(), dataset={"name": manifest.name}, concepts_name="w", concepts_sha256="", words=words,
        layers=[_layer("conv1", conv_ids, keys), _layer("fc", fc_ids, []), _layer("planted", planted_ids, [])])
    settings = {"final_layer": "fc", "planted_layer": "planted"}
    scores = demo_command.score_demo_run(result, demo_command.DemoInputs(store), settings, score_run)
    assert scores["final_top1"] == 1.0 and scores["planted_top1"] == 1.0
    assert scores["n_conv"] == 2 and scores["conv_top1"] == 1.0

    # The same artifacts read in the wrong shard order no longer line up with the images.
    result.layers[0] = _layer("conv1", conv_ids, keys[::-1])
    assert demo_command.score_demo_run(result, demo_command.DemoInputs(store), settings, score_run)["conv_top1"] < 1.0


class CountingStore(FilesystemStore):
    """A real filesystem store that counts the reads of each key."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: dict[str, int] = {}

    def get(self, key, sha256=None):
        name = getattr(key, "key", key)
        self.reads[name] = self.reads.get(name, 0) + 1
        return super().get(key, sha256)


def test_both_selections_scores_read_each_activation_artifact_and_the_manifest_once(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "store")
    images = list(generate(12, seed=3))
    manifest = register_dataset(store, "shapes-once", [ImageSource(name, data=data, labels=attrs)
                                                      for name, data, attrs in images], shard_size=6)
    acts = np.random.default_rng(0).random((12, 2)).astype(np.float32)
    keys = [put_arrays(store, f"activations/once-{i}.safetensors", {"activations": acts[i * 6:(i + 1) * 6]}).key
            for i in range(2)]
    words = list(FC_WORDS)
    result = RunResult(
        spec=resolve_spec(), dataset={"name": manifest.name}, concepts_name="w", concepts_sha256="", words=words,
        layers=[_layer("conv1", np.array([[0, 1], [1, 0]]), keys),
                _layer("fc", np.array([[i, 0] for i in range(len(FC_WORDS))]), [])])
    settings = {"final_layer": "fc", "planted_layer": None}
    inputs = demo_command.DemoInputs(store)
    store.reads.clear()
    first = demo_command.score_demo_run(result, inputs, settings, score_run)
    second = demo_command.score_demo_run(result, inputs, settings, score_run)   # the other selection's run
    assert demo_command._plain(first) == demo_command._plain(second)     # NaN (no planted layer) as None
    assert sorted(store.reads.values()) == [1] * len(store.reads) and set(keys) <= set(store.reads)
    assert not inputs.activations(keys).flags.writeable
