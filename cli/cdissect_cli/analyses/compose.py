"""`cdissect explain compose`: two-word explanations of units (the paper's compositional fig10).

For a unit, take its top-N concepts (N = 100 in the paper), form every ordered pair "w1 w2"
of distinct words plus the N singles (N² concepts), embed them with the run's CLIP, re-score
the whole layer against that concept set with the run's similarity function (the prior of
soft-WPMI spans all units of the layer, so the layer is scored, not the unit alone), and
report the unit's two best concepts. All through the services, on the run's stored image
embeddings and activations: only the new text embeddings are computed.
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from cdissect_cli.analyses.run_results import LayerResult, RunResults, analyses_dir
from cdissect_cli.analyses.service_calls import (embed_concepts, label_layer, layer_artifact_refs,
                                                 stored_ref)
from cdissect_cli.errors import CliError, InputError

DEFAULT_TOP = 100
REPORTED = 2


def compose_concepts(words: Sequence[str]) -> list[str]:
    """The singles, then every ordered pair "w1 w2" of distinct words; duplicates dropped."""
    singles = list(dict.fromkeys(w.strip() for w in words if w.strip()))
    pairs = [f"{a} {b}" for a in singles for b in singles if a != b]
    return list(dict.fromkeys(singles + pairs))


@dataclass(frozen=True)
class ComposedUnit:
    """A unit's original label and its best composed concepts with their scores."""

    unit: int
    label: str
    similarity: float
    candidates: int
    best: list[tuple[str, float]]


def unit_concepts(reply: Any, store: Any) -> dict[int, tuple[list[int], list[float]]]:
    """unit → (concept ids, scores) from a LabelLayer reply (its inline units, else its artifact)."""
    if reply.units:
        return {u.unit: (list(u.concept_ids), list(u.scores)) for u in reply.units}
    from cdissect_common.artifacts import get_arrays

    arrays = get_arrays(store, reply.labels)
    return {k: ([int(i) for i in arrays["concept_ids"][k]], [float(x) for x in arrays["scores"][k]])
            for k in range(arrays["concept_ids"].shape[0])}


def top_concepts_per_unit(run: RunResults, layer: LayerResult, store: Any, labeler: Any, top: int,
                          images: list, activations: list) -> dict[int, list[str]]:
    """Each unit's top-`top` concept words, from LabelLayer on the run's own artifacts."""
    text = stored_ref(store, layer.text_embedding_key, f"text-embedding ({layer.name})")
    reply = label_layer(labeler, run, layer, images, activations, text, top_concepts=top)
    words = run.concept_words
    if not words:
        raise InputError(f"{run.run_dir}/results.json lists no concept words; rerun `cdissect run`.")
    return {unit: [words[i] for i in ids] for unit, (ids, _) in unit_concepts(reply, store).items()}


def explain_units(run: RunResults, layer_name: str, units: Sequence[int] | None, top: int,
                  store: Any, embedder: Any, labeler: Any,
                  progress: Callable[[int, int], None] | None = None) -> list[ComposedUnit]:
    """Composed explanations of `units` (all units when None) of one layer."""
    if top < 1:
        raise InputError(f"--top must be at least 1 (got {top}).")
    layer = run.layer(layer_name)
    chosen = [layer.unit(u) for u in units] if units else list(layer.units)
    images, activations = layer_artifact_refs(store, layer)
    per_unit = top_concepts_per_unit(run, layer, store, labeler, top, images, activations)
    results = []
    for done, unit in enumerate(chosen):
        concepts = compose_concepts(per_unit.get(unit.unit, [unit.label]))
        text_ref = embed_concepts(embedder, run, concepts)
        reply = label_layer(labeler, run, layer, images, activations, text_ref, top_concepts=REPORTED)
        row = unit_concepts(reply, store).get(unit.unit)
        if row is None:
            raise CliError(f"the labeler's reply lacks unit {unit.unit} of layer {layer.name!r}; "
                           f"check the labeler's log.")
        best = [(concepts[i], float(s)) for i, s in zip(*row)]
        results.append(ComposedUnit(unit=unit.unit, label=unit.label, similarity=unit.similarity,
                                    candidates=len(concepts), best=best))
        if progress is not None:
            progress(done + 1, len(chosen))
    return results


def write_compose(run_dir: Path, layer: str, top: int, rows: Sequence[ComposedUnit]) -> tuple[Path, Path]:
    """analyses/compose_<layer>.csv and .json."""
    out = analyses_dir(run_dir)
    csv_path = out / f"compose_{layer}.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        header = ["layer", "unit", "label", "similarity", "candidates"]
        for r in range(1, REPORTED + 1):
            header += [f"composed{r}", f"composed{r}_similarity"]
        writer.writerow(header)
        for row in rows:
            cells = [layer, row.unit, row.label, f"{row.similarity:.6g}", row.candidates]
            for r in range(REPORTED):
                cells += [row.best[r][0], f"{row.best[r][1]:.6g}"] if r < len(row.best) else ["", ""]
            writer.writerow(cells)
    json_path = out / f"compose_{layer}.json"
    json_path.write_text(json.dumps({"layer": layer, "top": top, "units": [asdict(r) for r in rows]},
                                    indent=1) + "\n", encoding="utf-8")
    return csv_path, json_path
