"""The analyses' own arithmetic, without services: accuracy from a run's CSV, class-name matching,
weights-vs-concepts statistics, composed concepts, loading weight files."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from cdissect_cli.analyses.class_names import load_class_names, matches, normalize
from cdissect_cli.analyses.compose import compose_concepts
from cdissect_cli.analyses.final_layer import accuracy, write_final_layer
from cdissect_cli.analyses.run_results import load_run
from cdissect_cli.analyses.weights import load_weight_matrix, top_k_values, weights_vs_concepts
from cdissect_cli.errors import CliError
from cdissect_cli.jobspec import resolve_spec
from cdissect_cli.results import LayerResult, RunResult, write_run_folder

WORDS = ["tench", "goldfish", "shark", "hen", "ostrich", "zebra", "apple", "kite"]


def _final_layer_run(tmp_path: Path, k: int = 40, seed: int = 0) -> Path:
    """A run with one 'fc' layer whose units carry random top-5 concepts of WORDS."""
    rng = np.random.default_rng(seed)
    ids = np.array([rng.permutation(len(WORDS))[:5] for _ in range(k)])
    layer = LayerResult(
        name="fc", labels_key="", activation_keys=[], image_embedding_keys=[], text_embedding_key="",
        concept_ids=ids, scores=np.sort(rng.uniform(size=(k, 5)), axis=1)[:, ::-1],
        top_images=np.zeros((k, 0), dtype=np.int64), dead=np.zeros(k, dtype=bool))
    write_run_folder(tmp_path, RunResult(
        spec=resolve_spec(None, {"target_model": "resnet18", "layers": "fc"}), dataset={},
        concepts_name="w", concepts_sha256="0", words=WORDS, layers=[layer]))
    return tmp_path


def test_final_layer_accuracy_equals_a_recount_from_descriptions_csv(tmp_path: Path) -> None:
    run_dir = _final_layer_run(tmp_path)
    rng = np.random.default_rng(5)
    classes = [f"{WORDS[i]}, synonym{i}" for i in rng.integers(0, len(WORDS), 40)]
    result = accuracy(load_run(run_dir).layer("fc"), classes)

    with (run_dir / "descriptions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    top1 = sum(r["description"] == classes[int(r["unit"])].split(",")[0] for r in rows)
    top5 = sum(classes[int(r["unit"])].split(",")[0] in
               [r["description"]] + [r[f"top{j}"] for j in range(2, 6)] for r in rows)
    assert 0 < top1 < top5 < 40  # the random data exercises all three cases
    assert (result.top1_hits, result.top5_hits) == (top1, top5)
    assert result.top1 == pytest.approx(top1 / 40) and result.top5 == pytest.approx(top5 / 40)

    json_path, csv_path = write_final_layer(run_dir, result)
    with csv_path.open(newline="") as handle:
        written = list(csv.DictReader(handle))
    assert sum(int(r["top1_hit"]) for r in written) == top1 and json_path.is_file()


def test_final_layer_needs_one_class_per_unit(tmp_path: Path) -> None:
    run = load_run(_final_layer_run(tmp_path, k=6))
    with pytest.raises(CliError, match="6 units but the class-name list has 5"):
        accuracy(run.layer("fc"), WORDS[:5])


def test_class_name_matching_rule(tmp_path: Path) -> None:
    assert matches("goldfish", "goldfish, Carassius auratus")
    assert matches("Carassius auratus", "goldfish, Carassius auratus")
    assert matches("tench, Tinca tinca", "tench, Tinca tinca")  # imagenet_labels concept set
    assert matches("wine_cellar-bottle storage-s", "wine cellar-bottle storage")
    assert not matches("gold", "goldfish, Carassius auratus")
    assert normalize("  Bamboo_Forest-s ") == "bamboo forest"
    places = tmp_path / "places.txt"
    places.write_text("/a/airfield 0\n/a/apartment_building/outdoor 1\n\nplain name\n")
    assert load_class_names(str(places)) == ["airfield", "apartment building-outdoor", "plain name"]
    assert load_class_names("imagenet")[1] == "goldfish, Carassius auratus"
    assert len(load_class_names("places365")) == 365
    with pytest.raises(CliError, match="neither a file nor a shipped list"):
        load_class_names("no-such-list")


def test_weights_statistics_match_a_direct_computation() -> None:
    rng = np.random.default_rng(2)
    weights = rng.normal(size=(7, 11))
    cos = rng.uniform(-0.2, 1.0, size=(7, 11))
    sims = rng.uniform(size=11)
    report = weights_vs_concepts(weights, cos, sims, [f"in{i}" for i in range(11)],
                                 [f"out{o}" for o in range(7)], "layer4", "fc", "clip")
    assert report.ks == [4, 8, 16, 32, 64, 77]
    flat_w, flat_c = weights.ravel(), cos.ravel()
    for k, mean in zip(report.ks, report.mean_cos_top_k):
        top = np.sort(flat_w)[::-1][:k]
        assert mean == pytest.approx(np.mean([flat_c[np.where(flat_w == w)[0][0]] for w in top]))
    assert report.mean_cos_all == pytest.approx(cos.mean())
    assert report.pearson_weight_cos == pytest.approx(np.corrcoef(flat_w, flat_c)[0, 1])
    assert report.pearson_similarity_max_weight == pytest.approx(np.corrcoef(sims, weights.max(axis=0))[0, 1])
    best = report.top_connections[0]
    out_unit, in_unit = np.unravel_index(np.argmax(weights), weights.shape)
    assert (best["to_unit"], best["from_unit"], best["from_label"]) == (out_unit, in_unit, f"in{in_unit}")
    with pytest.raises(CliError, match=r"\[7, 11\].*10 \(fc\) x 11 \(layer4\)"):
        weights_vs_concepts(weights, np.zeros((10, 11)), sims, [], [], "layer4", "fc", "clip")


def test_top_k_values() -> None:
    assert top_k_values(4) == [4]
    assert top_k_values(2048000)[:3] == [4, 8, 16] and top_k_values(2048000)[-2:] == [2 ** 20, 2048000]


def test_weight_files(tmp_path: Path) -> None:
    matrix = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "w.npy", matrix)
    save_file({"weight": matrix, "bias": np.zeros(2, dtype=np.float32)}, str(tmp_path / "w.safetensors"))
    assert np.array_equal(load_weight_matrix(tmp_path / "w.npy"), matrix)
    assert np.array_equal(load_weight_matrix(tmp_path / "w.safetensors"), matrix)
    with pytest.raises(CliError, match="no tensor 'x'.*bias, weight"):
        load_weight_matrix(tmp_path / "w.safetensors", "x")
    np.save(tmp_path / "conv.npy", np.zeros((2, 3, 3, 3)))
    with pytest.raises(CliError, match=r"shape \[2, 3, 3, 3\]"):
        load_weight_matrix(tmp_path / "conv.npy")
    with pytest.raises(CliError, match="does not exist"):
        load_weight_matrix(tmp_path / "missing.npy")


def test_composed_concepts_are_singles_then_ordered_pairs() -> None:
    assert compose_concepts(["textile", "embroidered", "textile", " "]) == [
        "textile", "embroidered", "textile embroidered", "embroidered textile"]
    assert len(compose_concepts([f"w{i}" for i in range(100)])) == 10_000  # the paper's count


def test_final_layer_can_score_only_nameable_classes(tmp_path: Path) -> None:
    run = load_run(_final_layer_run(tmp_path, k=6))
    classes = ["tench, Tinca tinca", "no such thing", "Goldfish", "kite-s", "unnamed", "zebra"]
    full = accuracy(run.layer("fc"), classes)
    subset = accuracy(run.layer("fc"), classes, run.concept_words)
    assert (full.units, subset.units, subset.classes) == (6, 4, 6)
    assert [s.unit for s in subset.per_unit] == [0, 2, 3, 5]
    assert subset.top5_hits == full.top5_hits  # unnameable classes can never be hits
    with pytest.raises(CliError, match="nothing can be scored"):
        accuracy(run.layer("fc"), ["x"] * 6, run.concept_words)
