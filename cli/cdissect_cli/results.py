"""The run folder: `descriptions.csv`, `results.json` and `job.yaml` (layout in docs/CONTRACTS.md).

`descriptions.csv` starts with the reference's columns `layer,unit,description,similarity`, so
tools written for the authors' CSVs read ours unchanged; then the alternatives top2..topN with
their similarities, the dead flag, the quality AUC, and the held-out simulation scores
`correlation` and `auprc`. `results.json` holds everything a report or an analysis needs without
recomputation: the job, the dataset, the concept words, how labels were selected and scored, and
per layer the artifact keys, the score summary and every unit's top concepts and top images.
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

from cdissect_cli.analyses.quality import LOW_CORRELATION, RULE_TEXT, is_low_correlation, live_summary
from cdissect_cli.errors import InputError
from cdissect_cli.jobspec import JobSpec

RESULTS_VERSION = 1


@dataclass
class HeldOutQuality:
    """The labeler's held-out simulation scores of one layer ([K] arrays) and the split's size."""

    ARRAYS = ("correlation", "correlation_low", "correlation_high", "auprc", "auprc_base", "heldout_constant")

    correlation: np.ndarray
    correlation_low: np.ndarray
    correlation_high: np.ndarray
    auprc: np.ndarray
    auprc_base: np.ndarray
    heldout_constant: np.ndarray
    heldout_images: int

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], heldout_images: int) -> "HeldOutQuality":
        """From a labels artifact's arrays (float64 scores, bool constant flags)."""
        values = {name: np.asarray(arrays[name], dtype=np.float64) for name in cls.ARRAYS[:-1]}
        return cls(**values, heldout_constant=np.asarray(arrays["heldout_constant"], dtype=bool),
                   heldout_images=int(heldout_images))

    def unit(self, k: int) -> dict[str, Any]:
        """results.json fields of unit k."""
        return {"correlation": float(self.correlation[k]),
                "correlation_interval": [float(self.correlation_low[k]), float(self.correlation_high[k])],
                "auprc": float(self.auprc[k]), "auprc_base": float(self.auprc_base[k]),
                "heldout_constant": bool(self.heldout_constant[k])}


def score_summary(heldout: HeldOutQuality, dead: np.ndarray) -> dict[str, Any]:
    """Per-layer mean and median of correlation and AUPRC over the live units, and the low count."""
    live = ~np.asarray(dead, dtype=bool)
    low = sum(is_low_correlation(r, lo, heldout.heldout_images)
              for r, lo in zip(heldout.correlation[live], heldout.correlation_low[live]))
    return {"units_scored": int(live.sum()),
            **live_summary(dead, correlation=heldout.correlation, auprc=heldout.auprc),
            "low": int(low), "low_correlation": LOW_CORRELATION}


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
    similarity_rank: np.ndarray | None = None    # [K, t]: place of each top concept in the similarity's ranking
    heldout: HeldOutQuality | None = None

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
        raise InputError(f"cannot create the runs folder {runs_dir}: {err.strerror}; "
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
    header += ["dead", "quality_auc", "correlation", "auprc"]
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
            held = layer.heldout
            row += [_fmt(float(held.correlation[unit])), _fmt(float(held.auprc[unit]))] if held else ["", ""]
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
            quality = {"auc": None if math.isnan(auc) else auc, "p_value": None if math.isnan(p) else p}
            if layer.heldout is not None:
                quality.update(layer.heldout.unit(unit))
            record = {
                "unit": unit,
                "label": result.words[int(ids[0])],
                "similarity": float(scores[0]),
                "top": [[result.words[int(i)], float(s)] for i, s in zip(ids, scores)],
                "top_images": [int(i) for i in layer.top_images[unit]],
                "dead": bool(layer.dead[unit]),
                "quality": quality,
                "selected_by": result.spec.select,
            }
            if layer.similarity_rank is not None:
                record["similarity_rank"] = [int(r) for r in layer.similarity_rank[unit]]
            units.append(record)
        layer_doc = {
            "name": layer.name, "units": units, "labels_key": layer.labels_key,
            "activation_keys": list(layer.activation_keys),
            "image_embedding_keys": list(layer.image_embedding_keys),
            "text_embedding_key": layer.text_embedding_key,
        }
        if layer.heldout is not None:
            layer_doc["scores"] = score_summary(layer.heldout, layer.dead)
        layers.append(layer_doc)
    return {
        "version": RESULTS_VERSION,
        "job": result.spec.to_dict(),
        "dataset": dict(result.dataset),
        "concepts": {"name": result.concepts_name, "sha256": result.concepts_sha256,
                     "words": list(result.words)},
        "selection": selection_document(result.spec),
        "evaluation": evaluation_document(result),
        "layers": layers,
        "timings": dict(result.timings),
        "reused": dict(result.reused),
        "user_files": dict(result.user_files),
    }


def selection_document(spec: JobSpec) -> dict[str, Any]:
    """How the labels were chosen (results.json `selection`)."""
    doc: dict[str, Any] = {"mode": spec.select}
    if spec.select == "simulation":
        doc.update(candidates=spec.candidates, rank_penalty=spec.rank_penalty,
                   rule="similarity top-candidates re-ranked by correlation on the selection split "
                        "minus rank_penalty per place")
    return doc


def evaluation_document(result: RunResult) -> dict[str, Any]:
    """Where the correlation/AUPRC come from (results.json `evaluation`): the split, and whether the
    labels were chosen without those images (held-out) or with them (in-sample, the reference's use)."""
    spec = result.spec
    heldout = next((layer.heldout.heldout_images for layer in result.layers if layer.heldout is not None), None)
    return {"eval_fraction": spec.eval_fraction, "eval_seed": spec.eval_seed, "auprc_alpha": spec.auprc_alpha,
            "heldout_images": heldout, "in_sample": spec.select != "simulation",
            "low_rule": RULE_TEXT}


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
