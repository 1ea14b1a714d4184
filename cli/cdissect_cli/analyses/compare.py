"""Compare two neuron-description CSVs: label agreement, |Δ similarity| and the label scores per layer.

Both files use the reference's columns `layer,unit,description,similarity`, so this compares our
runs with each other or with the authors' released results, which ship in the CLI
(`--reference resnet50|resnet18_places`). Rows are matched by (layer, unit); rows present in only
one file are reported, never silently dropped. When a file also has cdissect's `correlation` and
`auprc` columns (the held-out simulation scores), each layer's mean and median of them over its
live units (rows not marked `dead`) are shown side by side: unlike the similarity, they are on
one scale across models, CLIPs and concept sets.
"""
from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

from cdissect_cli.analyses.quality import live_summary
from cdissect_cli.errors import CliError, InputError, read_text_file

REQUIRED_COLUMNS = ("layer", "unit", "description", "similarity")
# Short names of the authors' released result files (in cdissect_cli/data/reference_results).
REFERENCE_FILES = {
    "resnet50": "resnet50_imagenet_broden.csv",
    "resnet18_places": "resnet18_places_imagenet_broden.csv",
}
REFERENCE_PACKAGE = "cdissect_cli.data.reference_results"


@dataclass(frozen=True)
class Row:
    """One description: the label, its similarity and (cdissect runs) its held-out scores and dead flag."""

    description: str
    similarity: float
    correlation: float | None = None
    auprc: float | None = None
    dead: bool = False


@dataclass
class LayerComparison:
    """How two files agree on one layer."""

    layer: str
    matched: int
    agree: int
    agreement: float  # agree / matched (0 when nothing matched)
    abs_delta_mean: float | None
    abs_delta_median: float | None
    abs_delta_max: float | None
    only_in_a: list[int] = field(default_factory=list)
    only_in_b: list[int] = field(default_factory=list)
    label_changes: list[dict[str, Any]] = field(default_factory=list)  # unit, a, b
    scores_a: dict[str, float] | None = None  # correlation/auprc mean and median over A's live rows of the layer
    scores_b: dict[str, float] | None = None


@dataclass
class Comparison:
    """The whole comparison, per layer in the order layers first appear in A (then B)."""

    a: str
    b: str
    layers: list[LayerComparison]

    @property
    def total_matched(self) -> int:
        """Rows present in both files."""
        return sum(layer.matched for layer in self.layers)

    @property
    def total_agree(self) -> int:
        """Matched rows with equal labels."""
        return sum(layer.agree for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with overall totals."""
        matched = self.total_matched
        return {"a": self.a, "b": self.b, "matched": matched, "agree": self.total_agree,
                "agreement": self.total_agree / matched if matched else 0.0,
                "layers": [asdict(layer) for layer in self.layers]}


def reference_csv(name: str) -> Path:
    """Path of a released result file shipped in cdissect_common, by short name."""
    if name not in REFERENCE_FILES:
        raise InputError(f"unknown reference {name!r}; the shipped references are: "
                         f"{', '.join(REFERENCE_FILES)}. Pass one of those, or a CSV path.")
    try:
        path = Path(str(resources.files(REFERENCE_PACKAGE).joinpath(REFERENCE_FILES[name])))
    except ModuleNotFoundError:
        path = Path("/nonexistent")
    if not path.is_file():
        raise CliError(f"the reference file {REFERENCE_FILES[name]} is not installed in "
                       f"{REFERENCE_PACKAGE}; reinstall cdissect-common (`make install`) or pass "
                       f"the CSV path instead.")
    return path


def unit_records(path: Path | str, columns: tuple[str, ...]) -> Iterator[tuple[int, tuple[str, int], dict[str, str]]]:
    """(line, (layer, unit), record) of every row of a CSV keyed by layer,unit (a run folder means its
    descriptions.csv); a missing file or column, text that is not UTF-8, a non-integer unit or a
    repeated (layer, unit) is an InputError."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "descriptions.csv"
    if not path.is_file():
        raise InputError(f"{path} does not exist. Pass a CSV with the columns {','.join(columns)} (or a run "
                         f"folder holding descriptions.csv).")
    seen: set[tuple[str, int]] = set()
    reader = csv.DictReader(io.StringIO(read_text_file(path, "CSV file"), newline=""))
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise InputError(f"{path} lacks the column(s) {', '.join(missing)}; the CSV must start with the "
                         f"header {','.join(columns)}.")
    for line, record in enumerate(reader, start=2):
        try:
            key = (str(record["layer"]).strip(), int(record["unit"]))
        except (TypeError, ValueError):
            raise InputError(f"{path}:{line}: 'unit' must be an integer (got {record['unit']!r}). Fix or "
                             f"remove that row.") from None
        if key in seen:
            raise InputError(f"{path}:{line}: layer {key[0]!r} unit {key[1]} appears twice. Each (layer, "
                             f"unit) must appear once; remove the duplicate.")
        seen.add(key)
        yield line, key, record


def read_descriptions(path: Path | str) -> dict[tuple[str, int], Row]:
    """Rows of a descriptions CSV keyed by (layer, unit); a run folder means its descriptions.csv."""
    rows: dict[tuple[str, int], Row] = {}
    for line, key, record in unit_records(path, REQUIRED_COLUMNS):
        try:
            sim = float(record["similarity"])
        except (TypeError, ValueError):
            raise InputError(f"{path}:{line}: 'similarity' must be a number (got {record['similarity']!r}). "
                             f"Fix or remove that row.") from None
        rows[key] = Row(description=(record["description"] or "").strip(), similarity=sim,
                        correlation=_optional_number(record.get("correlation")),
                        auprc=_optional_number(record.get("auprc")),
                        dead=(record.get("dead") or "").strip().lower() == "true")
    return rows


def _optional_number(text: str | None) -> float | None:
    """A score column's value; empty or missing is None."""
    if text is None or not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        return None


def layer_scores(rows: list[Row]) -> dict[str, float] | None:
    """Mean and median of correlation and AUPRC over the live rows that have them (None when none has)."""
    summary = live_summary([r.dead for r in rows], correlation=[r.correlation for r in rows],
                           auprc=[r.auprc for r in rows])
    return {key: value for key, value in summary.items() if value is not None} or None


def compare_rows(a: dict[tuple[str, int], Row], b: dict[tuple[str, int], Row],
                 a_name: str = "A", b_name: str = "B") -> Comparison:
    """Per-layer agreement and |Δ similarity| of two keyed row sets."""
    layer_order: list[str] = []
    for layer, _ in list(a) + list(b):
        if layer not in layer_order:
            layer_order.append(layer)
    layers = []
    for name in layer_order:
        units_a = {u for (layer, u) in a if layer == name}
        units_b = {u for (layer, u) in b if layer == name}
        both = sorted(units_a & units_b)
        deltas = [abs(a[(name, u)].similarity - b[(name, u)].similarity) for u in both]
        changes = [{"unit": u, "a": a[(name, u)].description, "b": b[(name, u)].description}
                   for u in both if a[(name, u)].description != b[(name, u)].description]
        agree = len(both) - len(changes)
        layers.append(LayerComparison(
            layer=name, matched=len(both), agree=agree,
            agreement=agree / len(both) if both else 0.0,
            abs_delta_mean=statistics.fmean(deltas) if deltas else None,
            abs_delta_median=statistics.median(deltas) if deltas else None,
            abs_delta_max=max(deltas) if deltas else None,
            only_in_a=sorted(units_a - units_b), only_in_b=sorted(units_b - units_a),
            label_changes=changes,
            scores_a=layer_scores([a[(name, u)] for u in sorted(units_a)]),
            scores_b=layer_scores([b[(name, u)] for u in sorted(units_b)]),
        ))
    return Comparison(a=a_name, b=b_name, layers=layers)


def compare_files(a: Path | str, b: Path | str) -> Comparison:
    """Read two descriptions CSVs (or run folders) and compare them."""
    return compare_rows(read_descriptions(a), read_descriptions(b), str(a), str(b))


def write_comparison(comparison: Comparison, out: Path) -> Path:
    """Write the comparison as JSON to `out` (parents created); returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(comparison.to_dict(), indent=1) + "\n", encoding="utf-8")
    return out
