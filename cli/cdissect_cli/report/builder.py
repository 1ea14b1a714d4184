"""Write RUN_DIR/report.html and RUN_DIR/assets/ from a finished run.

The HTML holds only the layer index and run summary; every layer's units go to their own data
script (see layer_data), its score histogram to an SVG file, and the top images to shared JPEG
thumbnails cut from the dataset shards in the object store. Everything is relative to the
report folder, so the report opens offline from disk and can be copied elsewhere whole.
"""
from __future__ import annotations

import json
import shutil
from html import escape
from importlib import resources
from pathlib import Path
from string import Template

from google.protobuf import json_format

from cdissect.v1 import common_pb2
from cdissect_cli.analyses.quality import LEGACY_RULE_TEXT, RULE_TEXT
from cdissect_cli.analyses.run_results import ANALYSES_DIR, RunResults, load_run
from cdissect_cli.analyses.svg_plots import histogram_svg
from cdissect_cli.errors import CliError, InputError
from cdissect_cli.report.layer_data import LayerSummary, layer_payload, summarize, write_layer_file
from cdissect_cli.report.thumbnails import Thumbnail, write_thumbnails

REPORT_FILE = "report.html"
ASSETS_DIR = "assets"
STATIC_FILES = ("report.js", "report.css")
TOP_IMAGES = 10


def _package_text(folder: str, name: str) -> str:
    """A file shipped inside cdissect_cli/report/<folder>/."""
    return resources.files("cdissect_cli.report").joinpath(folder, name).read_text(encoding="utf-8")


def read_manifest(store, key: str) -> common_pb2.DatasetManifest:
    """The dataset manifest stored under `key` (the JSON form of cdissect.v1.DatasetManifest)."""
    try:
        text = store.get(key).decode("utf-8")
        return json_format.Parse(text, common_pb2.DatasetManifest(), ignore_unknown_fields=True)
    except KeyError as err:
        raise CliError(f"dataset manifest {key!r} is not in the store {store.url}: the run's store "
                       f"was moved or cleaned. Point CDISSECT_STORE at the run's store, or pass "
                       f"--no-images.") from err
    except (UnicodeDecodeError, json_format.ParseError) as err:
        raise CliError(f"dataset manifest {key!r} is not a valid manifest ({err}). Re-register the "
                       f"probe set with `cdissect run`.") from err


def collect_thumbnails(run: RunResults, assets: Path, top_images: int) -> dict[int, Thumbnail]:
    """Thumbnails of every unit's top images across all layers, each image written once."""
    if not run.store_url or not run.manifest_key:
        raise InputError(f"{run.run_dir}/results.json names no dataset store_url/manifest_key, so "
                         f"the top images cannot be found. Pass --no-images to write the report "
                         f"without them.")
    from cdissect_common.store import StoreError, open_store

    try:
        store = open_store(run.store_url)
        manifest = read_manifest(store, run.manifest_key)
        indices = {i for layer in run.layers for u in layer.units for i in u.top_images[:top_images]}
        return write_thumbnails(store, manifest, indices, assets)
    except StoreError as err:
        raise CliError(f"cannot read the probe images from the store {run.store_url}: {err}. Make "
                       f"the store reachable (CDISSECT_STORE / CDISSECT_S3_*), or pass --no-images."
                       ) from err


def _num(value: float | None, digits: int) -> str:
    """Table cell text for an optional number."""
    return "&mdash;" if value is None else f"{value:.{digits}f}"


def _layer_row(summary: LayerSummary) -> str:
    """One row of the layer index table."""
    name = escape(summary.name)
    link = f"#layer={escape(summary.name, quote=True)}"
    return (f'      <tr id="layer-{summary.index}"><td><a href="{link}">{name}</a></td>'
            f'<td class="num">{summary.units}</td><td class="num">{summary.dead}</td>'
            f'<td class="num">{summary.low_confidence}</td><td class="num">{summary.no_quality}</td>'
            f'<td class="num">{_num(summary.median_similarity, 4)}</td>'
            f'<td class="num">{_num(summary.median_correlation, 3)}</td>'
            f'<td class="num">{_num(summary.median_auprc, 3)}</td>'
            f'<td class="num">{_num(summary.median_auc, 3)}</td>'
            f'<td><a href="{link}"><img src="{escape(summary.plot_file)}" loading="lazy" '
            f'alt="similarity histogram of {name}"></a></td></tr>')


def _final_layer_summary(path: Path) -> str:
    """One line of a final-layer evaluation JSON: accuracies and mean cosines."""
    if path.suffix != ".json":
        return ""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        parts = [f"top-1 {100 * doc['top1']:.2f}%", f"top-5 {100 * doc['top5']:.2f}%"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    if doc.get("clip_cos_mean") is not None:
        parts.append(f"CLIP cos {doc['clip_cos_mean']:.4f}")
    if doc.get("sentence_cos_mean") is not None:
        parts.append(f"{doc.get('sentence_model')} cos {doc['sentence_cos_mean']:.4f}")
    return ", ".join(parts)


def _analyses_section(run_dir: Path) -> str:
    """Links to whatever the analysis commands wrote (plots shown inline), or nothing."""
    folder = run_dir / ANALYSES_DIR
    files = sorted(p for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []
    if not files:
        return ""
    items = []
    for path in files:
        rel = f"{ANALYSES_DIR}/{path.name}"
        link = f'<a href="{escape(rel, quote=True)}">{escape(path.name)}</a>'
        summary = _final_layer_summary(path) if path.name.startswith("final_layer_") else ""
        if summary:
            link += f": {escape(summary)}"
        if path.suffix == ".svg":
            link += f'<br><img src="{escape(rel, quote=True)}" loading="lazy" alt="{escape(path.name)}">'
        items.append(f"    <li>{link}</li>")
    return '  <h2>Analyses</h2>\n  <ul class="analyses">\n' + "\n".join(items) + "\n  </ul>"


def _run_info(run: RunResults) -> str:
    """One line of what was run: model, layers' probe set, concept set, CLIP, function."""
    job, ds = run.job, run.dataset
    similarity = job.get("similarity")
    function = similarity.get("function") if isinstance(similarity, dict) else similarity
    parts = [("model", job.get("target_model")), ("probe set", ds.get("name") or job.get("probe_set")),
             ("images", ds.get("num_images")), ("concepts", run.concepts.get("name") or job.get("concept_set")),
             ("CLIP", job.get("clip_model")), ("similarity", function)]
    return " &middot; ".join(f"{k}: {escape(str(v))}" for k, v in parts if v not in (None, ""))


def _has_scores(run: RunResults) -> bool:
    """True when the run carries the simulation scores (runs written before them do not)."""
    return any(u.correlation is not None for layer in run.layers for u in layer.units)


def _quality_rule(run: RunResults) -> str:
    """The rule the run's flags follow: the correlation rule, or the AUC/p rule of older runs."""
    return RULE_TEXT if _has_scores(run) else LEGACY_RULE_TEXT


def _scores_note(run: RunResults) -> str:
    """Which selection produced the labels, and whether their scores are held-out or in-sample."""
    if not _has_scores(run):
        return (f"This run predates the simulation scores: units are flagged by its AUC and p "
                f"({escape(LEGACY_RULE_TEXT)}).")
    ev, sel = run.evaluation, run.selection
    split = (f"{ev.get('heldout_images', '?')} held-out images (fraction {ev.get('eval_fraction')}, "
             f"seed {ev.get('eval_seed')})")
    if run.in_sample:
        return (f"Labels chosen by <strong>similarity</strong> (the reference's top-1, on all images). The "
                f"correlation and AUPRC are computed on {split}, which that choice also saw: they are "
                f"<strong>in-sample</strong>, optimistic for it.")
    return (f"Labels chosen by <strong>simulation</strong>: the similarity's top {escape(str(sel.get('candidates')))} "
            f"candidates re-ranked by correlation on the selection split (minus "
            f"{escape(str(sel.get('rank_penalty')))} per place in the similarity's ranking). The correlation "
            f"and AUPRC are computed on {split} that the choice never saw: they are <strong>held-out</strong>.")


def write_report(run_dir: Path, *, images: bool = True, top_images: int = TOP_IMAGES) -> Path:
    """Write RUN_DIR/report.html (+ assets/) from the finished run; returns the HTML's path.

    `images=False` skips the thumbnails (no object-store access at all). Rewriting is safe:
    data files and plots are replaced, existing thumbnails are reused.
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    assets = run_dir / ASSETS_DIR
    (assets / "data").mkdir(parents=True, exist_ok=True)
    (assets / "plots").mkdir(parents=True, exist_ok=True)
    thumbs = collect_thumbnails(run, assets, top_images) if images else {}

    summaries, layer_index = [], []
    for i, layer in enumerate(run.layers):
        data_file = f"{ASSETS_DIR}/data/layer-{i}.js"
        plot_file = f"{ASSETS_DIR}/plots/layer-{i}-similarity.svg"
        write_layer_file(run_dir / data_file, layer_payload(layer, i, thumbs, top_images))
        live = [u.similarity for u in layer.units if not u.dead]
        (run_dir / plot_file).write_text(
            histogram_svg(live, f"{layer.name}: similarity of the label (live units)", "similarity"),
            encoding="utf-8")
        summaries.append(summarize(layer, i, data_file, plot_file))
        layer_index.append({"name": layer.name, "file": data_file, "plot": plot_file,
                            "units": len(layer.units)})
    for name in STATIC_FILES:
        (assets / name).write_text(_package_text("static", name), encoding="utf-8")

    title = str(run.job.get("target_model") or run_dir.name)
    layers_json = json.dumps(layer_index, ensure_ascii=True).replace("</", "<\\/")
    html = Template(_package_text("templates", "report.html")).substitute(
        title=escape(title), run_info=_run_info(run), quality_rule=escape(_quality_rule(run)),
        scores_note=_scores_note(run),
        layer_rows="\n".join(_layer_row(s) for s in summaries),
        analyses_section=_analyses_section(run_dir), layers_json=layers_json,
    )
    out = run_dir / REPORT_FILE
    tmp = out.with_name(f".{REPORT_FILE}.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out


def remove_report(run_dir: Path) -> None:
    """Delete report.html and assets/ (used before a clean rebuild)."""
    run_dir = Path(run_dir)
    (run_dir / REPORT_FILE).unlink(missing_ok=True)
    shutil.rmtree(run_dir / ASSETS_DIR, ignore_errors=True)
