"""Per-layer data files of the report: one small JavaScript file per layer, loaded on demand.

Chromium refuses fetch() of JSON from `file://` pages, so each layer's units travel as a
script that hands a JSON object to `window.cdissectLayerLoaded`. The page injects a layer's
script only when the layer is opened, so the HTML stays small however many units a run has.

Unit rows are arrays, not objects, to keep 2048-unit layers compact:
`[unit, label, similarity, [[word, score], ...alternatives], [image index, ...], flag, auc, p,
correlation, [interval low, high], auprc, auprc chance level, flag reason, how the label was chosen]`
with flag "dead", "low", "unknown" or "" and `images: {index: [thumbnail path, caption]}`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cdissect_cli.analyses.quality import flag_reason, live_summary, unit_flag
from cdissect_cli.analyses.run_results import LayerResult, UnitResult
from cdissect_cli.report.thumbnails import Thumbnail

CALLBACK = "cdissectLayerLoaded"


@dataclass(frozen=True)
class LayerSummary:
    """Counts and score statistics the index table shows for one layer."""

    index: int
    name: str
    units: int
    dead: int
    low_confidence: int
    no_quality: int
    median_similarity: float | None
    median_auc: float | None
    data_file: str  # relative to the report folder
    plot_file: str
    median_correlation: float | None = None
    median_auprc: float | None = None


def _round(value: float | None, digits: int = 5) -> float | None:
    """Fewer digits in the data files; None stays None."""
    return None if value is None else round(float(value), digits)


def summarize(layer: LayerResult, index: int, data_file: str, plot_file: str) -> LayerSummary:
    """Counts of dead / low-confidence / unscored units and medians of the live units."""
    flags = [unit_flag(u) for u in layer.units]
    units = layer.units
    stats = live_summary([u.dead for u in units], similarity=[u.similarity for u in units],
                         auc=[u.auc for u in units], correlation=[u.correlation for u in units],
                         auprc=[u.auprc for u in units])
    return LayerSummary(
        index=index, name=layer.name, units=len(units), dead=flags.count("dead"),
        low_confidence=flags.count("low"), no_quality=flags.count("unknown"),
        median_similarity=stats["similarity_median"], median_auc=stats["auc_median"],
        data_file=data_file, plot_file=plot_file,
        median_correlation=stats["correlation_median"], median_auprc=stats["auprc_median"],
    )


def selection_text(unit: UnitResult) -> str:
    """How the label was chosen, for the report: the selection and the similarity's own rank."""
    if unit.selected_by == "simulation" and unit.similarity_rank is not None:
        return f"simulation: similarity rank {unit.similarity_rank}"
    return unit.selected_by


def layer_payload(layer: LayerResult, index: int, thumbs: dict[int, Thumbnail],
                  top_images: int = 10) -> dict:
    """The JSON object one layer file hands to the page."""
    rows = []
    used: set[int] = set()
    for u in layer.units:
        images = [i for i in u.top_images[:top_images] if i in thumbs]
        used.update(images)
        interval = [_round(x, 4) for x in u.correlation_interval] if u.correlation_interval else None
        rows.append([u.unit, u.label, _round(u.similarity),
                     [[w, _round(s)] for w, s in u.alternatives], images, unit_flag(u),
                     _round(u.auc, 4), None if u.p_value is None else float(f"{u.p_value:.3g}"),
                     _round(u.correlation, 4), interval, _round(u.auprc, 4), _round(u.auprc_base, 4),
                     flag_reason(u), selection_text(u)])
    return {"index": index, "name": layer.name, "units": rows,
            "images": {str(i): [thumbs[i].path, thumbs[i].caption] for i in sorted(used)}}


def write_layer_file(path: Path, payload: dict) -> None:
    """Write the script `window.cdissectLayerLoaded({...});` (JSON is valid JavaScript)."""
    text = json.dumps(payload, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    # "</script" cannot occur in JSON output except inside strings; escape it anyway.
    text = text.replace("</", "<\\/")
    Path(path).write_text(f"window.{CALLBACK}({text});\n", encoding="utf-8")
