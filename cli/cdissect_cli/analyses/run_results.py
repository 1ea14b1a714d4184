"""Read a finished run folder (`results.json`) into small typed records.

The report and every analysis start from the same data: the run's layers, each unit's label,
score, top concepts, top images, dead flag and quality figure, plus the store URL and artifact
keys that let an analysis reuse what the run already computed. The format is the run-folder
contract in docs/CONTRACTS.md; this module is its one reader on the CLI side, so a format
change is handled here once.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdissect_cli.errors import InputError

RESULTS_FILE = "results.json"
DESCRIPTIONS_FILE = "descriptions.csv"
ANALYSES_DIR = "analyses"


@dataclass(frozen=True)
class UnitResult:
    """One unit of one layer: its label and what backs it."""

    unit: int
    label: str
    similarity: float
    top: tuple[tuple[str, float], ...]  # best first; top[0] is the label itself
    top_images: tuple[int, ...]  # global image indices, most activating first
    dead: bool
    auc: float | None
    p_value: float | None
    correlation: float | None = None          # held-out (or in-sample: see RunResults.in_sample)
    correlation_interval: tuple[float, float] | None = None
    auprc: float | None = None
    auprc_base: float | None = None
    heldout_constant: bool = False
    selected_by: str = "similarity"
    similarity_rank: int | None = None        # place of the label in the similarity's own ranking (1 = top)
    heldout_images: int | None = None         # the size of the split the correlation/AUPRC were computed on

    @property
    def alternatives(self) -> tuple[tuple[str, float], ...]:
        """The concepts after the label (the report's "top-5 alternatives")."""
        return self.top[1:]


@dataclass(frozen=True)
class LayerResult:
    """One labelled layer with the artifact keys it was computed from."""

    name: str
    units: tuple[UnitResult, ...]
    labels_key: str = ""
    activation_keys: tuple[str, ...] = ()
    image_embedding_keys: tuple[str, ...] = ()
    text_embedding_key: str = ""

    def unit(self, index: int) -> UnitResult:
        """The unit with this index; a clear error when the layer has no such unit."""
        for u in self.units:
            if u.unit == index:
                return u
        raise InputError(f"layer {self.name!r} has no unit {index}: its units are "
                         f"0..{len(self.units) - 1}. Pass a unit index in that range.")


@dataclass(frozen=True)
class RunResults:
    """The whole of a run's results.json."""

    run_dir: Path
    job: dict[str, Any]
    dataset: dict[str, Any]
    concepts: dict[str, Any]
    layers: tuple[LayerResult, ...]
    timings: dict[str, Any] = field(default_factory=dict)
    user_files: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)

    @property
    def in_sample(self) -> bool:
        """True when the labels were chosen with the held-out images too (the reference's selection):
        their correlation/AUPRC are then in-sample figures, optimistic for the similarity's choice."""
        return bool(self.evaluation.get("in_sample", True))

    @property
    def store_url(self) -> str:
        """URL of the object store holding the run's artifacts and dataset shards."""
        return str(self.dataset.get("store_url", ""))

    @property
    def manifest_key(self) -> str:
        """Store key of the probe set's dataset manifest."""
        return str(self.dataset.get("manifest_key", ""))

    @property
    def concept_words(self) -> list[str]:
        """The run's concept list, in the order concept ids index."""
        return list(self.concepts.get("words", []))

    @property
    def clip_model(self) -> str:
        """The CLIP model the run used (the embedder's model name)."""
        return str(self.job.get("clip_model", ""))

    @property
    def clip_file(self) -> Any:
        """The ArtifactRef of the CLIP checkpoint the run uploaded (None when it used a name)."""
        from cdissect_cli.user_inputs import file_ref

        return file_ref(self.user_files.get("clip_model"))

    def layer(self, name: str) -> LayerResult:
        """The layer with this name; an unknown name lists the run's layers."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        names = ", ".join(layer.name for layer in self.layers) or "(none)"
        raise InputError(f"run {self.run_dir} has no layer {name!r}; its layers are: {names}. "
                         f"Pass one of those names.")


def _float_or_none(value: Any) -> float | None:
    """A finite float, or None for missing/NaN/null values (JSON has no NaN)."""
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _parse_unit(raw: dict[str, Any], where: str, heldout_images: int | None) -> UnitResult:
    """One unit record (scored on `heldout_images` held-out images); the label always leads its `top` list."""
    try:
        unit = int(raw["unit"])
        label = str(raw["label"])
        similarity = float(raw["similarity"])
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{where}: a unit record lacks a valid 'unit', 'label' or 'similarity' "
                         f"({err!r}). The run folder is damaged: rerun `cdissect run` to rewrite it.")
    top = tuple((str(w), float(s)) for w, s in raw.get("top") or [])
    if not top or top[0][0] != label:
        top = ((label, similarity),) + tuple(t for t in top if t[0] != label)
    quality = raw.get("quality") or {}
    interval = quality.get("correlation_interval")
    interval = (tuple(_float_or_none(x) for x in interval) if isinstance(interval, list) and len(interval) == 2
                else None)
    ranks = raw.get("similarity_rank") or []
    return UnitResult(
        unit=unit, label=label, similarity=similarity, top=top,
        top_images=tuple(int(i) for i in raw.get("top_images") or []),
        dead=bool(raw.get("dead", False)),
        auc=_float_or_none(quality.get("auc")), p_value=_float_or_none(quality.get("p_value")),
        correlation=_float_or_none(quality.get("correlation")),
        correlation_interval=interval if interval and None not in interval else None,
        auprc=_float_or_none(quality.get("auprc")), auprc_base=_float_or_none(quality.get("auprc_base")),
        heldout_constant=bool(quality.get("heldout_constant", False)),
        selected_by=str(raw.get("selected_by") or "similarity"),
        similarity_rank=int(ranks[0]) if ranks else None,
        heldout_images=heldout_images if _float_or_none(quality.get("correlation")) is not None else None,
    )


def _parse_layer(raw: dict[str, Any], where: str, heldout_images: int | None) -> LayerResult:
    """One layer record of results.json (its units scored on `heldout_images` held-out images)."""
    if "name" not in raw:
        raise InputError(f"{where}: a layer record has no 'name'. Rerun `cdissect run` to rewrite it.")
    name = str(raw["name"])
    units = tuple(sorted((_parse_unit(u, f"{where} layer {name}", heldout_images) for u in raw.get("units") or []),
                         key=lambda u: u.unit))
    return LayerResult(
        name=name, units=units, labels_key=str(raw.get("labels_key", "")),
        activation_keys=tuple(raw.get("activation_keys") or ()),
        image_embedding_keys=tuple(raw.get("image_embedding_keys") or ()),
        text_embedding_key=str(raw.get("text_embedding_key", "")),
    )


def load_run(run_dir: Path | str) -> RunResults:
    """Read RUN_DIR/results.json; errors say what is missing and how to get it."""
    run_dir = Path(run_dir).expanduser()
    path = run_dir / RESULTS_FILE
    if not run_dir.is_dir():
        raise InputError(f"run folder {run_dir} does not exist. Pass the folder `cdissect run` "
                         f"wrote (it holds {RESULTS_FILE} and {DESCRIPTIONS_FILE}).")
    if not path.is_file():
        raise InputError(f"{path} is missing: {run_dir} is not a finished run. Run `cdissect run` "
                         f"to completion first (rerunning the same command resumes it).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path} is not valid JSON ({err}). Rerun `cdissect run` to rewrite it.")
    if not isinstance(data, dict) or not isinstance(data.get("layers"), list):
        raise InputError(f"{path} has no 'layers' list. Rerun `cdissect run` to rewrite it.")
    evaluation = dict(data.get("evaluation") or {})
    heldout = evaluation.get("heldout_images")
    heldout_images = int(heldout) if isinstance(heldout, (int, float)) and not isinstance(heldout, bool) else None
    layers = tuple(_parse_layer(layer, str(path), heldout_images) for layer in data["layers"])
    return RunResults(
        run_dir=run_dir, job=dict(data.get("job") or {}), dataset=dict(data.get("dataset") or {}),
        concepts=dict(data.get("concepts") or {}), layers=layers,
        timings=dict(data.get("timings") or {}), selection=dict(data.get("selection") or {}),
        evaluation=evaluation, user_files=dict(data.get("user_files") or {}),
    )


def analyses_dir(run_dir: Path) -> Path:
    """RUN_DIR/analyses, created on demand: where every analysis writes its outputs."""
    out = Path(run_dir) / ANALYSES_DIR
    out.mkdir(parents=True, exist_ok=True)
    return out
