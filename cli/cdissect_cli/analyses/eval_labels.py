"""`cdissect eval labels`: score any neuron descriptions on a run's stored embeddings and activations.

The labels come from a CSV with the reference's columns `layer,unit,description` (the run's own
descriptions.csv by default, or another method's or another run's file). Every distinct
description is embedded with the run's CLIP, prompt templates and precision through the
embedder (texts outside the run's concept set included), and the labeler's `EvaluateLabels`
scores each unit's description on the run's stored image embeddings and activations: held-out
correlation with its 95% interval, AUPRC with its chance level, and AUC / p for the same top
images. The held-out split is the run's (its eval fraction and seed), so the figures are directly
comparable with the run's own; whether a method chose its labels on those images is beyond our
knowledge, so they are held-out for cdissect's `--select simulation` labels only.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cdissect.v1 import labeler_pb2
from google.protobuf import json_format

from cdissect_cli.analyses.compare import unit_records
from cdissect_cli.analyses.quality import is_low_correlation, live_summary
from cdissect_cli.analyses.run_results import RunResults, analyses_dir
from cdissect_cli.analyses.service_calls import (embed_concepts, layer_artifact_refs, rpc_error,
                                                 similarity_params)
from cdissect_cli.errors import InputError
from cdissect_cli.jobspec import resolve_spec

LABEL_COLUMNS = ("layer", "unit", "description")
EVALUATION_KEYS = ("eval_fraction", "eval_seed", "auprc_alpha")


@dataclass(frozen=True)
class ScoredUnit:
    """One unit's description and the labeler's held-out scores of it (``cdissect.v1.UnitScores``)."""

    layer: str
    description: str
    scores: labeler_pb2.UnitScores
    heldout_images: int

    @property
    def low(self) -> bool:
        """The report's low rule (dead units are not "low", they are dead)."""
        return not self.scores.dead and is_low_correlation(self.scores.correlation, self.scores.correlation_low,
                                                           self.heldout_images)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: layer, description and every score field."""
        fields = json_format.MessageToDict(self.scores, preserving_proto_field_name=True,
                                           always_print_fields_with_no_presence=True)
        return {"layer": self.layer, "description": self.description, **fields}


def read_labels(path: Path | str) -> dict[tuple[str, int], str]:
    """(layer, unit) → description from a CSV with columns layer,unit,description (others ignored)."""
    labels: dict[tuple[str, int], str] = {}
    for line, key, record in unit_records(path, LABEL_COLUMNS):
        text = (record["description"] or "").strip()
        if not text:
            raise InputError(f"{path}:{line}: layer {key[0]!r} unit {key[1]} has an empty description; give "
                             f"every row a label or remove it")
        labels[key] = text
    if not labels:
        raise InputError(f"{path} has no label rows; nothing to score")
    return labels


def plan(run: RunResults, labels: dict[tuple[str, int], str]) -> tuple[list[str], dict[str, list[int]]]:
    """(distinct texts, layer → per-unit text index or -1), checked against the run's layers and units."""
    texts = list(dict.fromkeys(labels.values()))
    index = {t: i for i, t in enumerate(texts)}
    per_layer: dict[str, list[int]] = {}
    names = [layer.name for layer in run.layers]
    for (layer_name, unit), text in labels.items():
        if layer_name not in names:
            raise InputError(f"the labels name layer {layer_name!r}, which run {run.run_dir} did not label; its layers "
                             f"are: {', '.join(names)}. Pass labels of this run's model and layers")
        layer = run.layer(layer_name)
        if not 0 <= unit < len(layer.units):
            raise InputError(f"layer {layer_name!r} of run {run.run_dir} has units 0..{len(layer.units) - 1}, but the "
                             f"labels name unit {unit}; remove that row or pass the labels of this model")
        ids = per_layer.setdefault(layer_name, [-1] * len(layer.units))
        ids[unit] = index[text]
    return texts, per_layer


def score_labels(run: RunResults, labels: dict[tuple[str, int], str], store: Any, embedder: Any,
                 labeler: Any, deadline_s: float = 900.0) -> tuple[list[ScoredUnit], dict[str, Any]]:
    """Embed the descriptions and score them layer by layer; (scored units, per-layer summary)."""
    texts, per_layer = plan(run, labels)
    # the run's held-out split (its job's eval fraction, seed, AUPRC share; the defaults for older runs)
    split = resolve_spec(overrides={key: run.job.get(key) for key in EVALUATION_KEYS}).evaluation_proto()
    text_ref = embed_concepts(embedder, run, texts)
    scored: list[ScoredUnit] = []
    summary: dict[str, Any] = {}
    for layer_name, ids in per_layer.items():
        layer = run.layer(layer_name)
        images, activations = layer_artifact_refs(store, layer)
        request = labeler_pb2.EvaluateLabelsRequest(
            layer=layer_name, image_embeddings=images, activations=activations, text_embeddings=text_ref,
            label_ids=ids, evaluation=split, precision=str(run.job.get("clip_precision") or ""),
            similarity=similarity_params(run))
        try:
            reply = labeler.EvaluateLabels(request, timeout=deadline_s)
        except grpc.RpcError as err:
            raise rpc_error(f"EvaluateLabels on layer {layer_name!r}", err) from err
        rows = [ScoredUnit(layer=layer_name, description=texts[ids[u.unit]], scores=u,
                           heldout_images=reply.heldout_images)
                for u in reply.units if u.labelled]
        scored += rows
        dead = [r.scores.dead for r in rows]
        summary[layer_name] = {
            "units_scored": dead.count(False), "heldout_images": reply.heldout_images, "positives": reply.positives,
            **live_summary(dead, correlation=[r.scores.correlation for r in rows],
                           auprc=[r.scores.auprc for r in rows]),
            "low": sum(r.low for r in rows), "dead": dead.count(True)}
    return scored, summary


def write_eval_labels(run_dir: Path, name: str, source: str, rows: list[ScoredUnit],
                      summary: dict[str, Any]) -> tuple[Path, Path]:
    """analyses/eval_labels_<name>.csv (one row per unit) and .json (the per-layer summary)."""
    out = analyses_dir(run_dir)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "labels"
    csv_path = out / f"eval_labels_{safe}.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["layer", "unit", "description", "correlation", "correlation_low", "correlation_high",
                         "auprc", "auprc_base", "auc", "p_value", "flag"])
        for r in rows:
            u = r.scores
            flag = "dead" if u.dead else ("low" if r.low else "")
            writer.writerow([r.layer, u.unit, r.description, f"{u.correlation:.6g}", f"{u.correlation_low:.6g}",
                             f"{u.correlation_high:.6g}", f"{u.auprc:.6g}", f"{u.auprc_base:.6g}", f"{u.auc:.6g}",
                             f"{u.p_value:.3g}", flag])
    json_path = out / f"eval_labels_{safe}.json"
    json_path.write_text(json.dumps({"labels": source, "layers": summary,
                                     "units": [r.to_dict() for r in rows]}, indent=1) + "\n", encoding="utf-8")
    return csv_path, json_path
