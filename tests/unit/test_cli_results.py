"""Run folder writer: descriptions.csv, results.json, job.yaml, run folder names."""
from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

import numpy as np

from cdissect_cli.jobspec import resolve_spec
from cdissect_cli.results import HeldOutQuality, LayerResult, RunResult, new_run_dir, write_run_folder


def _result(spec_overrides: dict | None = None) -> RunResult:
    spec = resolve_spec(None, {"target_model": "resnet18", "layers": "layer4", **(spec_overrides or {})})
    layer = LayerResult(
        name="layer4", labels_key="labels/x.safetensors", activation_keys=["activations/a.safetensors"],
        image_embedding_keys=["embeddings/image/i.safetensors"], text_embedding_key="embeddings/text/t.safetensors",
        concept_ids=np.array([[1, 0, 2], [2, 1, 0]]), scores=np.array([[0.5, 0.25, 0.125], [0.75, 0.5, 0.25]]),
        top_images=np.array([[3, 1], [0, 2]]), dead=np.array([False, True]),
        quality_auc=np.array([0.9, np.nan]), quality_p=np.array([0.01, np.nan]),
        similarity_rank=np.array([[3, 1, 2], [1, 2, 3]]),
        heldout=HeldOutQuality(correlation=np.array([0.5, 0.0]), correlation_low=np.array([0.25, -1.0]),
                               correlation_high=np.array([0.75, 1.0]), auprc=np.array([0.625, 0.5]),
                               auprc_base=np.array([0.5, 0.5]), heldout_constant=np.array([False, True]),
                               heldout_images=40))
    return RunResult(spec=spec, dataset={"name": "probe", "digest": "d", "num_images": 4},
                     concepts_name="words", concepts_sha256="s", words=["cat", "dog", "red"], layers=[layer],
                     timings={"labels": 1.0}, reused={"labels": {"total": 1, "reused": 0, "computed": 1}})


def test_descriptions_csv_starts_with_reference_columns(tmp_path: Path) -> None:
    write_run_folder(tmp_path, _result())
    with (tmp_path / "descriptions.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["layer", "unit", "description", "similarity", "top2", "top2_similarity",
                       "top3", "top3_similarity", "dead", "quality_auc", "correlation", "auprc"]
    assert rows[1] == ["layer4", "0", "dog", "0.5", "cat", "0.25", "red", "0.125", "false", "0.9", "0.5", "0.625"]
    assert rows[2][:4] == ["layer4", "1", "red", "0.75"] and rows[2][-4:] == ["true", "", "0", "0.5"]


def test_results_json_and_job_yaml(tmp_path: Path) -> None:
    result = _result()
    write_run_folder(tmp_path, result)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["version"] == 1 and doc["concepts"]["words"] == ["cat", "dog", "red"]
    layer = doc["layers"][0]
    assert layer["name"] == "layer4" and layer["labels_key"] == "labels/x.safetensors"
    assert layer["units"][0] == {"unit": 0, "label": "dog", "similarity": 0.5,
                                 "top": [["dog", 0.5], ["cat", 0.25], ["red", 0.125]],
                                 "top_images": [3, 1], "dead": False,
                                 "quality": {"auc": 0.9, "p_value": 0.01, "correlation": 0.5,
                                             "correlation_interval": [0.25, 0.75], "auprc": 0.625,
                                             "auprc_base": 0.5, "heldout_constant": False},
                                 "selected_by": "similarity", "similarity_rank": [3, 1, 2]}
    assert layer["units"][1]["quality"] == {"auc": None, "p_value": None, "correlation": 0.0,
                                            "correlation_interval": [-1.0, 1.0], "auprc": 0.5, "auprc_base": 0.5,
                                            "heldout_constant": True}
    # per layer over the live units (unit 1 is dead): mean and median, and the low count
    assert layer["scores"] == {"units_scored": 1, "correlation_mean": 0.5, "correlation_median": 0.5,
                               "auprc_mean": 0.625, "auprc_median": 0.625, "low": 0, "low_correlation": 0.2}
    assert doc["selection"] == {"mode": "similarity"}
    assert doc["evaluation"]["in_sample"] is True and doc["evaluation"]["heldout_images"] == 40
    assert doc["evaluation"]["eval_fraction"] == 0.2 and doc["evaluation"]["eval_seed"] == 0
    assert "target_model: resnet18" in (tmp_path / "job.yaml").read_text()
    assert not list(tmp_path.glob(".*tmp*"))


def test_simulation_runs_record_a_heldout_selection(tmp_path: Path) -> None:
    write_run_folder(tmp_path, _result({"select": "simulation", "candidates": 7, "rank_penalty": 0.01}))
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["selection"]["mode"] == "simulation" and doc["selection"]["candidates"] == 7
    assert doc["selection"]["rank_penalty"] == 0.01 and doc["evaluation"]["in_sample"] is False
    assert doc["layers"][0]["units"][0]["selected_by"] == "simulation"
    assert "select: simulation" in (tmp_path / "job.yaml").read_text()


def test_run_dir_names_and_same_second_clash(tmp_path: Path) -> None:
    now = datetime(2026, 11, 26, 18, 5, 9)
    first = new_run_dir(tmp_path, "resnet18", now)
    second = new_run_dir(tmp_path, "/weights/my model.pt", now)
    third = new_run_dir(tmp_path, "resnet18", now)
    assert first.name == "resnet18_261126_180509"
    assert second.name == "my_model.pt_261126_180509"
    assert third.name == "resnet18_261126_180509_2"
