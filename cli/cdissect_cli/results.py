"""The run folder: `descriptions.csv`, `results.json` and `job.yaml` (layout in docs/CONTRACTS.md).

`descriptions.csv` starts with the reference's columns `layer,unit,description,similarity`, so
tools written for the authors' CSVs read ours unchanged; then the alternatives top2..topN with
their similarities, the dead flag and the quality AUC. `results.json` holds everything a report
or an analysis needs without recomputation: the job, the dataset, the concept words, and per
layer the artifact keys and every unit's top concepts and top images.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from cdissect_cli.errors import CliError
from cdissect_cli.jobspec import JobSpec

RESULTS_VERSION = 1


@dataclass
class LayerResult:
    """One labelled layer: artifact keys plus the labels as arrays ([K, t], [K, m], [K])."""

    name: str
    labels_key: str
    activation_keys: list[str]
    image_embedding_keys: list[str]
    text_embedding_key: str
    concept_ids: np.ndarray
    scores: np.ndarray
    top_images: np.ndarray
    dead: np.ndarray
    quality_auc: np.ndarray | None = None
    quality_p: np.ndarray | None = None

    @property
    def units(self) -> int:
        """Number of units (neurons) in the layer."""
        return int(self.concept_ids.shape[0])


@dataclass
class RunResult:
    """Everything a finished run writes to its folder."""

    spec: JobSpec
    dataset: dict[str, Any]
    concepts_name: str
    concepts_sha256: str
    words: list[str]
    layers: list[LayerResult]
    timings: dict[str, float] = field(default_factory=dict)
    reused: dict[str, Any] = field(default_factory=dict)
    user_files: dict[str, dict[str, str]] = field(default_factory=dict)  # checkpoints uploaded for the run


def new_run_dir(runs_dir: Path, model: str, now: datetime | None = None) -> Path:
    """Create `runs_dir/<model>_<YYmmdd_HHMMSS>/`; a same-second clash gets a `_2`, `_3` suffix."""
    stamp = (now or datetime.now()).strftime("%y%m%d_%H%M%S")
    safe_model = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(model).name) or "model"
    runs_dir = Path(runs_dir)
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CliError(f"cannot create the runs folder {runs_dir}: {err.strerror}; "
                       f"set --runs-dir or CDISSECT_RUNS_DIR to a writable folder") from err
    base = runs_dir / f"{safe_model}_{stamp}"
    candidate, n = base, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = Path(f"{base}_{n}")


def _fmt(value: float) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"


def description_rows(result: RunResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows of descriptions.csv, layers in job order, units 0..K-1."""
    t = max((layer.concept_ids.shape[1] for layer in result.layers), default=1)
    header = ["layer", "unit", "description", "similarity"]
    for r in range(2, t + 1):
        header += [f"top{r}", f"top{r}_similarity"]
    header += ["dead", "quality_auc"]
    rows: list[list[str]] = []
    for layer in result.layers:
        for unit in range(layer.units):
            ids, scores = layer.concept_ids[unit], layer.scores[unit]
            row = [layer.name, str(unit), result.words[int(ids[0])], f"{float(scores[0]):.6g}"]
            for r in range(1, t):
                if r < len(ids):
                    row += [result.words[int(ids[r])], f"{float(scores[r]):.6g}"]
                else:
                    row += ["", ""]
            auc = float(layer.quality_auc[unit]) if layer.quality_auc is not None else float("nan")
            row += [str(bool(layer.dead[unit])).lower(), _fmt(auc)]
            rows.append(row)
    return header, rows


def results_document(result: RunResult) -> dict[str, Any]:
    """The results.json document (schema in docs/CONTRACTS.md)."""
    layers = []
    for layer in result.layers:
        units = []
        for unit in range(layer.units):
            ids, scores = layer.concept_ids[unit], layer.scores[unit]
            auc = float(layer.quality_auc[unit]) if layer.quality_auc is not None else float("nan")
            p = float(layer.quality_p[unit]) if layer.quality_p is not None else float("nan")
            units.append({
                "unit": unit,
                "label": result.words[int(ids[0])],
                "similarity": float(scores[0]),
                "top": [[result.words[int(i)], float(s)] for i, s in zip(ids, scores)],
                "top_images": [int(i) for i in layer.top_images[unit]],
                "dead": bool(layer.dead[unit]),
                "quality": {"auc": None if math.isnan(auc) else auc,
                            "p_value": None if math.isnan(p) else p},
            })
        layers.append({
            "name": layer.name, "units": units, "labels_key": layer.labels_key,
            "activation_keys": list(layer.activation_keys),
            "image_embedding_keys": list(layer.image_embedding_keys),
            "text_embedding_key": layer.text_embedding_key,
        })
    return {
        "version": RESULTS_VERSION,
        "job": result.spec.to_dict(),
        "dataset": dict(result.dataset),
        "concepts": {"name": result.concepts_name, "sha256": result.concepts_sha256,
                     "words": list(result.words)},
        "layers": layers,
        "timings": dict(result.timings),
        "reused": dict(result.reused),
        "user_files": dict(result.user_files),
    }


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8", newline="")
    os.replace(tmp, path)


def write_run_folder(run_dir: Path, result: RunResult) -> None:
    """Write job.yaml, descriptions.csv and results.json into `run_dir` (each atomically)."""
    run_dir = Path(run_dir)
    _atomic_write(run_dir / "job.yaml", result.spec.to_yaml())
    header, rows = description_rows(result)
    tmp = run_dir / f".descriptions.csv.tmp-{os.getpid()}"
    with tmp.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, run_dir / "descriptions.csv")
    _atomic_write(run_dir / "results.json", json.dumps(results_document(result), indent=1) + "\n")
