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
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
from cdissect.v1 import labeler_pb2
from cdissect_common import evaluation

from cdissect_cli.analyses.quality import is_low_correlation
from cdissect_cli.analyses.run_results import DESCRIPTIONS_FILE, RunResults, analyses_dir
from cdissect_cli.analyses.service_calls import (embed_concepts, layer_artifact_refs, rpc_error,
                                                 similarity_params)
from cdissect_cli.errors import CliError

LABEL_COLUMNS = ("layer", "unit", "description")


@dataclass(frozen=True)
class ScoredUnit:
    """One unit's description and its held-out scores."""

    layer: str
    unit: int
    description: str
    correlation: float
    correlation_low: float
    correlation_high: float
    auprc: float
    auprc_base: float
    auc: float
    p_value: float
    dead: bool
    heldout_constant: bool

    @property
    def low(self) -> bool:
        """The report's low rule (dead units are not "low", they are dead)."""
        return not self.dead and is_low_correlation(self.correlation, self.correlation_low)


def read_labels(path: Path | str) -> dict[tuple[str, int], str]:
    """(layer, unit) → description from a CSV with columns layer,unit,description (others ignored)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / DESCRIPTIONS_FILE
    if not path.is_file():
        raise CliError(f"labels file {path} does not exist; pass a CSV with the columns "
                       f"{','.join(LABEL_COLUMNS)} (or a run folder holding {DESCRIPTIONS_FILE})", exit_code=2)
    labels: dict[tuple[str, int], str] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in LABEL_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise CliError(f"{path} lacks the column(s) {', '.join(missing)}; a labels CSV starts with the header "
                           f"{','.join(LABEL_COLUMNS)}", exit_code=2)
        for line, record in enumerate(reader, start=2):
            try:
                key = (str(record["layer"]).strip(), int(record["unit"]))
            except (TypeError, ValueError):
                raise CliError(f"{path}:{line}: 'unit' must be an integer, got {record['unit']!r}; fix or remove "
                               f"that row", exit_code=2) from None
            text = (record["description"] or "").strip()
            if not text:
                raise CliError(f"{path}:{line}: layer {key[0]!r} unit {key[1]} has an empty description; give "
                               f"every row a label or remove it", exit_code=2)
            if key in labels:
                raise CliError(f"{path}:{line}: layer {key[0]!r} unit {key[1]} appears twice; each (layer, unit) "
                               f"must appear once", exit_code=2)
            labels[key] = text
    if not labels:
        raise CliError(f"{path} has no label rows; nothing to score", exit_code=2)
    return labels


def plan(run: RunResults, labels: dict[tuple[str, int], str]) -> tuple[list[str], dict[str, list[int]]]:
    """(distinct texts, layer → per-unit text index or -1), checked against the run's layers and units."""
    texts = list(dict.fromkeys(labels.values()))
    index = {t: i for i, t in enumerate(texts)}
    per_layer: dict[str, list[int]] = {}
    names = [layer.name for layer in run.layers]
    for (layer_name, unit), text in labels.items():
        if layer_name not in names:
            raise CliError(f"the labels name layer {layer_name!r}, which run {run.run_dir} did not label; its layers "
                           f"are: {', '.join(names)}. Pass labels of this run's model and layers", exit_code=2)
        layer = run.layer(layer_name)
        if not 0 <= unit < len(layer.units):
            raise CliError(f"layer {layer_name!r} of run {run.run_dir} has units 0..{len(layer.units) - 1}, but the "
                           f"labels name unit {unit}; remove that row or pass the labels of this model", exit_code=2)
        ids = per_layer.setdefault(layer_name, [-1] * len(layer.units))
        ids[unit] = index[text]
    return texts, per_layer


def evaluation_proto(run: RunResults) -> labeler_pb2.HeldOutEvaluation:
    """The run's held-out split (its job's eval fraction, seed, AUPRC share; defaults for older runs)."""
    job = run.job
    return labeler_pb2.HeldOutEvaluation(
        fraction=float(job.get("eval_fraction", evaluation.EVAL_FRACTION)),
        seed=int(job.get("eval_seed", evaluation.EVAL_SEED)),
        alpha=float(job.get("auprc_alpha", evaluation.AUPRC_ALPHA)))


def score_labels(run: RunResults, labels: dict[tuple[str, int], str], store: Any, embedder: Any,
                 labeler: Any, deadline_s: float = 900.0) -> tuple[list[ScoredUnit], dict[str, Any]]:
    """Embed the descriptions and score them layer by layer; (scored units, per-layer summary)."""
    texts, per_layer = plan(run, labels)
    text_ref = embed_concepts(embedder, run, texts)
    scored: list[ScoredUnit] = []
    summary: dict[str, Any] = {}
    for layer_name, ids in per_layer.items():
        layer = run.layer(layer_name)
        images, activations = layer_artifact_refs(store, layer)
        request = labeler_pb2.EvaluateLabelsRequest(
            layer=layer_name, image_embeddings=images, activations=activations, text_embeddings=text_ref,
            label_ids=ids, evaluation=evaluation_proto(run), precision=str(run.job.get("clip_precision") or ""),
            similarity=similarity_params(run))
        try:
            reply = labeler.EvaluateLabels(request, timeout=deadline_s)
        except grpc.RpcError as err:
            raise rpc_error(f"EvaluateLabels on layer {layer_name!r}", err) from err
        rows = [ScoredUnit(layer=layer_name, unit=u.unit, description=texts[ids[u.unit]], correlation=u.correlation,
                           correlation_low=u.correlation_low, correlation_high=u.correlation_high, auprc=u.auprc,
                           auprc_base=u.auprc_base, auc=u.auc, p_value=u.p_value, dead=u.dead,
                           heldout_constant=u.heldout_constant)
                for u in reply.units if u.labelled]
        scored += rows
        live = [r for r in rows if not r.dead]
        summary[layer_name] = {
            "units_scored": len(live), "heldout_images": reply.heldout_images, "positives": reply.positives,
            "correlation_mean": statistics.fmean(r.correlation for r in live) if live else None,
            "correlation_median": statistics.median(r.correlation for r in live) if live else None,
            "auprc_mean": statistics.fmean(r.auprc for r in live) if live else None,
            "auprc_median": statistics.median(r.auprc for r in live) if live else None,
            "low": sum(r.low for r in live), "dead": len(rows) - len(live)}
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
            flag = "dead" if r.dead else ("low" if r.low else "")
            writer.writerow([r.layer, r.unit, r.description, f"{r.correlation:.6g}", f"{r.correlation_low:.6g}",
                             f"{r.correlation_high:.6g}", f"{r.auprc:.6g}", f"{r.auprc_base:.6g}", f"{r.auc:.6g}",
                             f"{r.p_value:.3g}", flag])
    json_path = out / f"eval_labels_{safe}.json"
    json_path.write_text(json.dumps({"labels": source, "layers": summary,
                                     "units": [asdict(r) for r in rows]}, indent=1) + "\n", encoding="utf-8")
    return csv_path, json_path
