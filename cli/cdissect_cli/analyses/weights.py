"""`cdissect analyze weights`: do strongly connected units have related concepts?

The paper's weights-vs-concepts use case (repo fig5_use_case): for two consecutive layers
(e.g. layer4 → fc), take the CLIP text cosine between the label of each input unit and the
label of each output unit, and relate it to the weight connecting them: the mean cosine over
the top-k weights for growing k (large weights should connect similar concepts), Pearson
correlation of weight and cosine over all weights, and Pearson correlation of an input unit's
label similarity with its largest outgoing weight.

The weight matrix [out, in] comes from a file the user exports, e.g. for torchvision ResNet-50:
  python -c "import torch, torchvision as tv; from safetensors.torch import save_file; m = tv.models.resnet50(weights='DEFAULT'); save_file({'weight': m.fc.weight.detach().contiguous()}, 'fc.safetensors')"
(or `numpy.save('fc.npy', m.fc.weight.detach().numpy())`). The CLI reads it without torch.
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cdissect_cli.analyses.run_results import RunResults, analyses_dir
from cdissect_cli.analyses.service_calls import embed_texts_checked
from cdissect_cli.analyses.svg_plots import line_plot_svg
from cdissect_cli.errors import InputError

TOP_CONNECTIONS = 10


def load_weight_matrix(path: Path, tensor: str | None = None) -> np.ndarray:
    """The [out, in] float64 matrix stored in a .npy or .safetensors file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"weights file {path} does not exist. Export it first (see `cdissect analyze "
                         f"weights --help`).")
    if path.suffix == ".npy":
        try:
            matrix = np.load(path, allow_pickle=False)
        except (ValueError, EOFError, OSError) as err:
            raise InputError(f"{path} is not a plain numeric .npy array ({err}); save it with numpy.save "
                             f"from a float tensor.") from err
    elif path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            arrays = load_file(str(path))
        except Exception as err:  # noqa: BLE001 - safetensors raises its own SafetensorError
            raise InputError(f"{path} is not a readable safetensors file ({err}); save the matrix with "
                             f"safetensors' save_file.") from err
        if tensor is None:
            if len(arrays) == 1:
                tensor = next(iter(arrays))
            elif "weight" in arrays:
                tensor = "weight"
            else:
                raise InputError(f"{path} holds several tensors ({', '.join(sorted(arrays))}); name one "
                                 f"with --tensor.")
        if tensor not in arrays:
            raise InputError(f"{path} has no tensor {tensor!r}; it holds: {', '.join(sorted(arrays))}.")
        matrix = arrays[tensor]
    else:
        raise InputError(f"{path}: unsupported weights format {path.suffix!r}; use .safetensors or .npy.")
    if matrix.ndim != 2:
        raise InputError(f"the weight tensor in {path} has shape {list(matrix.shape)}; a [out, in] matrix is "
                         f"needed (a linear layer's weight; for a 1x1 conv, reshape it to 2-D first).")
    return matrix.astype(np.float64)


def top_k_values(n: int) -> list[int]:
    """k = 4, 8, 16, ... below n, then n itself (all weights), as in the paper's plot."""
    ks, k = [], 4
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


@dataclass
class WeightsReport:
    """Relation of weight size and label similarity between two layers."""

    from_layer: str
    to_layer: str
    shape: list[int]
    clip_model: str
    ks: list[int]
    mean_cos_top_k: list[float]
    mean_cos_all: float
    pearson_weight_cos: float | None
    pearson_weight_cos_p: float | None
    pearson_similarity_max_weight: float | None
    pearson_similarity_max_weight_p: float | None
    top_connections: list[dict[str, Any]] = field(default_factory=list)


def _pearson(x: np.ndarray, y: np.ndarray) -> tuple[float | None, float | None]:
    """Pearson r and two-sided p, or (None, None) when undefined (constant input, n < 3)."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None, None
    from scipy import stats  # only this command needs scipy; keep CLI start-up light

    result = stats.pearsonr(x, y)
    return float(result.statistic), float(result.pvalue)


def weights_vs_concepts(weights: np.ndarray, cos: np.ndarray, from_similarity: Sequence[float],
                        from_labels: Sequence[str], to_labels: Sequence[str],
                        from_layer: str, to_layer: str, clip_model: str) -> WeightsReport:
    """All statistics from the weight matrix and the label-cosine matrix (both [out, in])."""
    if weights.shape != cos.shape:
        raise InputError(f"the weight matrix is {list(weights.shape)} but the layers have "
                         f"{cos.shape[0]} ({to_layer}) x {cos.shape[1]} ({from_layer}) units; the file must "
                         f"hold the [out, in] weight of {from_layer} -> {to_layer}.")
    flat_w, flat_c = weights.ravel(), cos.ravel()
    order = np.argsort(-flat_w, kind="stable")
    cumulative = np.cumsum(flat_c[order])
    ks = top_k_values(flat_w.size)
    means = [float(cumulative[k - 1] / k) for k in ks]
    r, p = _pearson(flat_w, flat_c)
    r_sim, p_sim = _pearson(np.asarray(from_similarity, dtype=np.float64), weights.max(axis=0))
    top = []
    for flat in order[:TOP_CONNECTIONS]:
        out_unit, in_unit = np.unravel_index(flat, weights.shape)
        top.append({"from_unit": int(in_unit), "from_label": from_labels[in_unit],
                    "to_unit": int(out_unit), "to_label": to_labels[out_unit],
                    "weight": float(weights[out_unit, in_unit]), "clip_cos": float(cos[out_unit, in_unit])})
    return WeightsReport(
        from_layer=from_layer, to_layer=to_layer, shape=list(weights.shape), clip_model=clip_model,
        ks=ks, mean_cos_top_k=means, mean_cos_all=means[-1],
        pearson_weight_cos=r, pearson_weight_cos_p=p,
        pearson_similarity_max_weight=r_sim, pearson_similarity_max_weight_p=p_sim,
        top_connections=top)


def analyze_weights(run: RunResults, from_layer: str, to_layer: str, weights: np.ndarray,
                    embedder: Any, to_names: Sequence[str] | None = None) -> WeightsReport:
    """Label cosines through the embedder (run's CLIP), then the statistics.

    `to_names` replaces the output layer's labels (e.g. the fc class names, as in the paper).
    """
    source = run.layer(from_layer)
    from_labels = [u.label for u in source.units]
    if to_names is not None:
        to_labels = list(to_names)
    else:
        to_labels = [u.label for u in run.layer(to_layer).units]
    vectors = embed_texts_checked(embedder, run.clip_model, from_labels + to_labels, model_file=run.clip_file)
    cos = vectors.of(to_labels) @ vectors.of(from_labels).T
    return weights_vs_concepts(weights, cos, [u.similarity for u in source.units], from_labels,
                               to_labels, from_layer, to_layer, run.clip_model)


def write_weights(run_dir: Path, report: WeightsReport) -> list[Path]:
    """JSON summary, CSV of the top connections and an SVG plot into RUN_DIR/analyses."""
    out = analyses_dir(run_dir)
    stem = f"weights_{report.from_layer}_{report.to_layer}"
    json_path = out / f"{stem}.json"
    doc = asdict(report)
    json_path.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    csv_path = out / f"{stem}_top.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["from_unit", "from_label", "to_unit", "to_label",
                                                     "weight", "clip_cos"])
        writer.writeheader()
        writer.writerows(report.top_connections)
    svg_path = out / f"{stem}.svg"
    svg_path.write_text(line_plot_svg(
        report.ks, report.mean_cos_top_k, f"{report.from_layer} -> {report.to_layer}: label similarity "
        f"of the top-k weights", "k (largest weights)", "mean CLIP cos", log_x=True,
        reference_y=report.mean_cos_all, reference_label="all weights:"), encoding="utf-8")
    return [json_path, csv_path, svg_path]
