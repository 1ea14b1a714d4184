"""`cdissect eval final-layer`: do a classifier's output units get their class's name?

Unit i of the final layer should be labelled with class i. The paper scores this (Tables 2/3)
by top-1 / top-5 accuracy of "label == class name" (top-5: any of the unit's five best
concepts), and by the mean cosine between label and class name in CLIP's text space and in a
sentence-embedding space (all-mpnet-base-v2 in the paper). Labels come from results.json; the
vectors come from the embedder service (the run's CLIP; the first sentence model it can load).
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cdissect_cli.analyses.class_names import matches, normalize
from cdissect_cli.analyses.run_results import LayerResult, RunResults, analyses_dir
from cdissect_cli.analyses.service_calls import (SENTENCE_MODELS, TextVectors, embed_texts_checked,
                                                 sentence_vectors)
from cdissect_cli.errors import InputError

TOP_K = 5
MATCH_RULE = ("hit: label equals the class name or one of its comma-separated synonyms, after "
              "lower-casing, '_' -> ' ' and dropping a Broden '-s' suffix")


@dataclass(frozen=True)
class UnitScore:
    """One output unit against its class."""

    unit: int
    class_name: str
    label: str
    rank: int | None  # 1-based position of the class among the unit's top concepts, None if absent
    clip_cos: float | None = None
    sentence_cos: float | None = None


@dataclass
class FinalLayerReport:
    """Accuracy and cosine metrics of one final layer."""

    layer: str
    units: int
    top1: float
    top5: float
    top1_hits: int
    top5_hits: int
    classes: int = 0  # units of the layer; `units` may be fewer when only nameable classes are scored
    scored_only_nameable: bool = False
    clip_model: str | None = None
    clip_cos_mean: float | None = None
    sentence_model: str | None = None
    sentence_cos_mean: float | None = None
    sentence_unavailable: list[str] = field(default_factory=list)
    match_rule: str = MATCH_RULE
    per_unit: list[UnitScore] = field(default_factory=list)


def class_rank(top: Sequence[tuple[str, float]], class_name: str, k: int = TOP_K) -> int | None:
    """1-based rank of the first of the top-k concepts naming the class (None if none does)."""
    for position, (word, _) in enumerate(top[:k], start=1):
        if matches(word, class_name):
            return position
    return None


def nameable(class_name: str, normalized_words: set[str]) -> bool:
    """True when some concept (given in `normalize`d form) names the class, so a hit is possible."""
    wanted = {normalize(class_name)} | {normalize(part) for part in class_name.split(",")}
    return not wanted.isdisjoint(normalized_words)


def accuracy(layer: LayerResult, class_names: Sequence[str],
             concept_words: Sequence[str] | None = None) -> FinalLayerReport:
    """Top-1 / top-5 accuracy of unit i ↔ class i; the layer must have one unit per class.

    With `concept_words`, only units whose class the concept set can name are scored (the
    paper's Table 2 scores the 267 Places365 classes that have a Broden scene label).
    """
    if len(layer.units) != len(class_names):
        raise InputError(f"layer {layer.name!r} has {len(layer.units)} units but the class-name list has "
                         f"{len(class_names)} names; pass the class names of this layer's outputs, in order.")
    units = layer.units
    if concept_words is not None:
        normalized = {normalize(w) for w in concept_words}
        units = tuple(u for u in units if nameable(class_names[u.unit], normalized))
        if not units:
            raise InputError("no class of the list is named by any concept of the run's concept set, so "
                             "nothing can be scored; drop --nameable-only or check the class names.")
    scores = [UnitScore(unit=u.unit, class_name=class_names[u.unit], label=u.label,
                        rank=class_rank(u.top, class_names[u.unit])) for u in units]
    n = len(scores)
    top1 = sum(s.rank == 1 for s in scores)
    top5 = sum(s.rank is not None for s in scores)
    return FinalLayerReport(layer=layer.name, units=n, top1=top1 / n if n else 0.0,
                            top5=top5 / n if n else 0.0, top1_hits=top1, top5_hits=top5,
                            classes=len(layer.units), scored_only_nameable=concept_words is not None,
                            per_unit=scores)


def paired_cosines(vectors: TextVectors, labels: Sequence[str], class_names: Sequence[str]) -> np.ndarray:
    """cos(label_i, class_i) for every unit (vectors are already L2-normalised)."""
    return np.sum(vectors.of(labels) * vectors.of(class_names), axis=1)


def add_cosines(report: FinalLayerReport, embedder: Any, clip_model: str,
                sentence_models: Sequence[str] = SENTENCE_MODELS, clip_file: Any = None) -> FinalLayerReport:
    """Fill in the CLIP-space and sentence-space mean cosines through the embedder's EmbedTexts
    (`clip_file`: the checkpoint the run uploaded, RunResults.clip_file)."""
    labels = [s.label for s in report.per_unit]
    classes = [s.class_name for s in report.per_unit]
    clip = embed_texts_checked(embedder, clip_model, labels + classes, model_file=clip_file)
    clip_cos = paired_cosines(clip, labels, classes)
    sentence, reasons = sentence_vectors(embedder, labels + classes, sentence_models)
    sent_cos = paired_cosines(sentence, labels, classes) if sentence is not None else None
    report.per_unit = [UnitScore(**{**asdict(s), "clip_cos": float(clip_cos[i]),
                                    "sentence_cos": None if sent_cos is None else float(sent_cos[i])})
                       for i, s in enumerate(report.per_unit)]
    report.clip_model = clip_model
    report.clip_cos_mean = float(np.mean(clip_cos)) if len(clip_cos) else None
    report.sentence_model = sentence.model if sentence is not None else None
    report.sentence_cos_mean = float(np.mean(sent_cos)) if sent_cos is not None and len(sent_cos) else None
    report.sentence_unavailable = reasons
    return report


def evaluate_final_layer(run: RunResults, layer_name: str, class_names: Sequence[str],
                         embedder: Any | None, nameable_only: bool = False) -> FinalLayerReport:
    """Accuracy from results.json, plus cosines when an embedder stub is given."""
    report = accuracy(run.layer(layer_name), class_names, run.concept_words if nameable_only else None)
    if embedder is not None:
        add_cosines(report, embedder, run.clip_model, clip_file=run.clip_file)
    return report


def write_final_layer(run_dir: Path, report: FinalLayerReport) -> tuple[Path, Path]:
    """analyses/final_layer_<layer>.json (summary) and .csv (one row per unit)."""
    out = analyses_dir(run_dir)
    summary = asdict(report)
    summary.pop("per_unit")
    json_path = out / f"final_layer_{report.layer}.json"
    json_path.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    csv_path = out / f"final_layer_{report.layer}.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["unit", "class_name", "label", "class_rank", "top1_hit", "top5_hit",
                         "clip_cos", "sentence_cos"])
        for s in report.per_unit:
            writer.writerow([s.unit, s.class_name, s.label, "" if s.rank is None else s.rank,
                             int(s.rank == 1), int(s.rank is not None),
                             "" if s.clip_cos is None else f"{s.clip_cos:.6f}",
                             "" if s.sentence_cos is None else f"{s.sentence_cos:.6f}"])
    return json_path, csv_path
