"""The analysis commands end to end: `cdissect` processes using the real services (started once
with `cdissect up`, stopped with `cdissect down`), on a run whose artifacts this test stores directly through
cdissect_common.artifacts (random-weight "network": random activations and image embeddings of
the tiny CLIP's width, the CLIP's own text embeddings are not needed for the run's labels).

Every number is checked against a direct recomputation in this process: CLIP text vectors from
the same checkpoint through the embedder backend, soft-WPMI through the labeler's dense function.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from cdissect_cli.jobspec import resolve_spec
from cdissect_cli.results import LayerResult, RunResult, write_run_folder
from cdissect_common.artifacts import put_arrays
from cdissect_common.store import open_store

pytestmark = pytest.mark.slow

WORDS = ["red", "green", "blue", "circle", "square", "dark", "bright", "round", "box", "dot",
         "sky", "grass"]
SHARDS, PER_SHARD, DIM = 2, 20, 32  # DIM: the tiny CLIP's embedding width (conftest)
UNITS = {"layer4": 16, "fc": 10}
PARAMS = {"top_k": 8}  # soft-WPMI over 40 images


def _normalized(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _dense_scores(images: np.ndarray, texts: np.ndarray, activations: np.ndarray) -> np.ndarray:
    """[K, C] soft-WPMI as the labeler's dense reference function computes it."""
    from cdissect_labeler.similarity import soft_wpmi

    return np.asarray(soft_wpmi(images @ texts.T, activations, **PARAMS))


def _clip_texts(checkpoint: Path, texts: list[str]) -> np.ndarray:
    """CLIP text vectors straight from the backend the embedder uses (no service)."""
    from cdissect_embedder.backends.registry import load_backend

    backend = load_backend(str(checkpoint), "cpu", "float32")
    return backend.encode_texts(texts).numpy()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_clip_checkpoint: Path) -> Iterator[dict]:
    """A finished run folder whose artifacts live in a filesystem store, plus the raw arrays."""
    tmp = tmp_path_factory.mktemp("analyses")
    store_url = f"file://{tmp / 'store'}"
    store = open_store(store_url)
    rng = np.random.default_rng(7)
    images = _normalized(rng, SHARDS * PER_SHARD)
    texts = _normalized(rng, len(WORDS))
    text_ref = put_arrays(store, "embeddings/text/test-words.safetensors", {"embeddings": texts})
    image_keys = [put_arrays(store, f"embeddings/image/test-{s}.safetensors",
                             {"embeddings": images[s * PER_SHARD:(s + 1) * PER_SHARD]}).key
                  for s in range(SHARDS)]
    layers, acts = [], {}
    for name, k in UNITS.items():
        acts[name] = rng.gamma(2.0, size=(SHARDS * PER_SHARD, k)).astype(np.float32)
        keys = [put_arrays(store, f"activations/test-{name}-{s}.safetensors",
                           {"activations": acts[name][s * PER_SHARD:(s + 1) * PER_SHARD]}).key
                for s in range(SHARDS)]
        scores = _dense_scores(images, texts, acts[name])
        ids = np.argsort(-scores, axis=1, kind="stable")[:, :5]
        layers.append(LayerResult(
            name=name, labels_key="", activation_keys=keys, image_embedding_keys=image_keys,
            text_embedding_key=text_ref.key, concept_ids=ids, scores=np.take_along_axis(scores, ids, 1),
            top_images=np.argsort(-acts[name], axis=0)[:10].T, dead=np.zeros(k, dtype=bool)))
    spec = resolve_spec(None, {"target_model": "resnet18", "layers": "layer4,fc",
                               "clip_model": str(tiny_clip_checkpoint), "similarity_params": PARAMS})
    run_dir = tmp / "run"
    run_dir.mkdir()
    write_run_folder(run_dir, RunResult(
        spec=spec, dataset={"name": "none", "num_images": SHARDS * PER_SHARD, "store_url": store_url},
        concepts_name="words", concepts_sha256="0", words=WORDS, layers=layers))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDISSECT_")}
    env.update({"HOME": str(tmp), "XDG_CACHE_HOME": str(tmp / "cache"), "CDISSECT_STORE": store_url,
                "CDISSECT_DEVICE": "cpu", "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"})
    doc = json.loads((run_dir / "results.json").read_text())
    world = {"run": run_dir, "env": env, "images": images, "texts": texts, "acts": acts, "doc": doc,
             "clip": tiny_clip_checkpoint}
    _cdissect(world, "up")  # start the services once; each command finds them via `cdissect up`'s state
    try:
        yield world
    finally:
        _cdissect(world, "down")


def _cdissect(world: dict, *args: str) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh process (it starts the services it needs) and check torch stayed out."""
    code = ("import sys; from cdissect_cli.app import main\n"
            "try:\n    main(sys.argv[1:])\nfinally:\n"
            "    assert 'torch' not in sys.modules, 'the CLI imported torch'\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], env=world["env"], capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc


def _labels(world: dict, layer: str) -> list[dict]:
    return next(layer_doc for layer_doc in world["doc"]["layers"] if layer_doc["name"] == layer)["units"]


def test_eval_final_layer(world: dict, tmp_path: Path) -> None:
    units = _labels(world, "fc")
    # Planted class names: even units get their label (top-1 hit), units 1, 7 their 3rd concept.
    classes = [u["label"] if i % 2 == 0 else (u["top"][2][0] if i in (1, 7) else "zebra crossing")
               for i, u in enumerate(units)]
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(classes) + "\n")
    _cdissect(world, "eval", "final-layer", str(world["run"]), "--layer", "fc", "--class-names", str(names))

    summary = json.loads((world["run"] / "analyses/final_layer_fc.json").read_text())
    assert (summary["top1_hits"], summary["top5_hits"], summary["units"]) == (5, 7, 10)
    with (world["run"] / "analyses/final_layer_fc.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    vectors = _clip_texts(world["clip"], [u["label"] for u in units] + classes)
    direct = np.sum(vectors[:10] * vectors[10:], axis=1)
    assert [float(r["clip_cos"]) for r in rows] == pytest.approx(direct.tolist(), abs=1e-4)
    assert summary["clip_cos_mean"] == pytest.approx(float(direct.mean()), abs=1e-4)
    assert summary["sentence_model"] in ("sentence:all-mpnet-base-v2", "sentence:all-MiniLM-L6-v2")
    assert all(float(r["sentence_cos"]) == pytest.approx(1.0, abs=1e-4) for r in rows[::2])


def test_analyze_weights(world: dict, tmp_path: Path) -> None:
    weights = np.random.default_rng(1).normal(size=(UNITS["fc"], UNITS["layer4"])).astype(np.float32)
    np.save(tmp_path / "fc.npy", weights)
    _cdissect(world, "analyze", "weights", str(world["run"]), "--from", "layer4", "--to", "fc",
              "--weights", str(tmp_path / "fc.npy"))

    report = json.loads((world["run"] / "analyses/weights_layer4_fc.json").read_text())
    src, dst = [u["label"] for u in _labels(world, "layer4")], [u["label"] for u in _labels(world, "fc")]
    vectors = _clip_texts(world["clip"], dst + src)
    cos = vectors[:len(dst)] @ vectors[len(dst):].T
    assert report["mean_cos_all"] == pytest.approx(float(cos.mean()), abs=1e-4)
    top4 = np.argsort(-weights.ravel())[:4]
    assert report["mean_cos_top_k"][0] == pytest.approx(float(cos.ravel()[top4].mean()), abs=1e-4)
    assert report["pearson_weight_cos"] == pytest.approx(np.corrcoef(weights.ravel(), cos.ravel())[0, 1], abs=1e-4)
    assert (world["run"] / "analyses/weights_layer4_fc.svg").read_text().startswith("<svg")


def test_explain_compose(world: dict) -> None:
    _cdissect(world, "explain", "compose", str(world["run"]), "--layer", "layer4", "--units", "0,3", "--top", "3")

    with (world["run"] / "analyses/compose_layer4.csv").open(newline="") as handle:
        rows = {int(r["unit"]): r for r in csv.DictReader(handle)}
    assert sorted(rows) == [0, 3]
    base = _dense_scores(world["images"], world["texts"], world["acts"]["layer4"])
    for unit, row in rows.items():
        top3 = [WORDS[i] for i in np.argsort(-base[unit], kind="stable")[:3]]
        concepts = top3 + [f"{a} {b}" for a in top3 for b in top3 if a != b]
        assert int(row["candidates"]) == 9
        scores = _dense_scores(world["images"], _clip_texts(world["clip"], concepts), world["acts"]["layer4"])
        best = np.argsort(-scores[unit], kind="stable")[:2]
        assert [row["composed1"], row["composed2"]] == [concepts[i] for i in best]
        assert float(row["composed1_similarity"]) == pytest.approx(float(scores[unit, best[0]]), rel=1e-3, abs=1e-4)
