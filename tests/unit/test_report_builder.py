"""The HTML report from a run folder: index, per-layer data files, plots, shared thumbnails.

Runs are built with the real writers (cdissect_common.manifest.register_dataset into a
filesystem store, cdissect_cli.results.write_run_folder), so the report reads exactly what
`cdissect run` writes.
"""
from __future__ import annotations

import json
import re
from html import escape
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cdissect_cli.analyses.quality import LEGACY_RULE_TEXT, RULE_TEXT
from cdissect_cli.errors import CliError
from cdissect_cli.jobspec import resolve_spec
from cdissect_cli.report import write_report
from cdissect_cli.report.layer_data import CALLBACK
from cdissect_cli.results import HeldOutQuality, LayerResult, RunResult, write_run_folder
from cdissect_common.manifest import ImageSource, manifest_key, register_dataset
from cdissect_common.store import open_store
from tests.conftest import make_probe_images

WORDS = ["red", "green", "blue", "circle", "square", "dark", "bright"]


def build_run(tmp_path: Path, n_images: int = 12, units: int = 6, shard_size: int = 5) -> Path:
    """A finished two-layer run whose probe images live in a filesystem store under tmp_path."""
    store_url = f"file://{tmp_path / 'store'}"
    store = open_store(store_url)
    images = [ImageSource(name=n, data=d, labels={"class": c})
              for n, d, c in make_probe_images(n_images)]
    manifest = register_dataset(store, "probe", images, shard_size=shard_size)
    rng = np.random.default_rng(0)
    layers = []
    for name, k in (("layer4", units), ("fc", 3)):
        ids = np.array([rng.permutation(len(WORDS))[:5] for _ in range(k)])
        scores = np.sort(rng.uniform(0.1, 1.0, size=(k, 5)), axis=1)[:, ::-1]
        top = np.array([rng.permutation(n_images)[:10] for _ in range(k)])
        dead = np.zeros(k, dtype=bool)
        dead[-1] = True
        auc = rng.uniform(0.3, 1.0, size=k)
        auc[0], auc[1] = 0.95, 0.55  # unit 1: low confidence by AUC
        p = np.full(k, 1e-4)
        layers.append(LayerResult(
            name=name, labels_key=f"labels/{name}.safetensors", activation_keys=[],
            image_embedding_keys=[], text_embedding_key="", concept_ids=ids, scores=scores,
            top_images=top, dead=dead, quality_auc=auc, quality_p=p))
    spec = resolve_spec(None, {"target_model": "resnet18", "layers": "layer4,fc"})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_run_folder(run_dir, RunResult(
        spec=spec, dataset={"name": "probe", "digest": manifest.digest, "num_images": n_images,
                            "store_url": store_url, "manifest_key": manifest_key("probe")},
        concepts_name="words", concepts_sha256="0" * 64, words=WORDS, layers=layers))
    return run_dir


def read_layer_file(path: Path) -> dict:
    """The JSON object a layer data script hands to the page."""
    text = path.read_text()
    match = re.fullmatch(rf"window\.{CALLBACK}\((.*)\);\n", text, flags=re.S)
    assert match, text[:80]
    return json.loads(match.group(1))


def test_report_index_lists_layers_with_counts(tmp_path: Path) -> None:
    run_dir = build_run(tmp_path)
    html = write_report(run_dir).read_text()
    row = re.search(r'<tr id="layer-0">(.*?)</tr>', html).group(1)
    cells = re.findall(r'<td class="num">([^<]*)</td>', row)
    # units, dead, low-confidence, no quality figure
    assert cells[:4] == ["6", "1", "1", "0"]
    assert "http://" not in html and "https://" not in html  # nothing fetched from the network
    assert (run_dir / "assets" / "report.js").is_file() and (run_dir / "assets" / "report.css").is_file()
    assert (run_dir / "assets/plots/layer-0-similarity.svg").read_text().startswith("<svg")


def test_a_run_without_simulation_scores_states_the_rule_its_flags_follow(tmp_path: Path) -> None:
    html = write_report(build_run(tmp_path), images=False).read_text()
    rule = re.search(r'flagged <span class="badge low">low</span> when (.*?), and', html, flags=re.S).group(1)
    assert rule == escape(LEGACY_RULE_TEXT) and "predates the simulation scores" in html
    scored = write_report(build_scored_run(tmp_path / "scored"), images=False).read_text()
    assert re.search(r'low</span> when (.*?), and\s', scored, flags=re.S).group(1) == escape(RULE_TEXT)


def test_layer_file_carries_units_alternatives_flags_and_images(tmp_path: Path) -> None:
    run_dir = build_run(tmp_path)
    write_report(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    payload = read_layer_file(run_dir / "assets/data/layer-0.js")
    assert payload["name"] == "layer4" and len(payload["units"]) == 6
    for row, unit in zip(payload["units"], results["layers"][0]["units"]):
        assert row[0] == unit["unit"] and row[1] == unit["label"]
        assert row[2] == pytest.approx(unit["similarity"], abs=1e-5)
        assert [w for w, _ in row[3]] == [w for w, _ in unit["top"][1:]]
        assert row[4] == unit["top_images"]
    assert [row[5] for row in payload["units"]] == ["", "low", "", "", "", "dead"]
    for index, (path, caption) in payload["images"].items():
        assert (run_dir / "assets" / path).is_file()
        assert caption.startswith(f"#{index} img_")


def test_thumbnails_are_small_jpegs_written_once(tmp_path: Path) -> None:
    run_dir = build_run(tmp_path, n_images=12)
    write_report(run_dir)
    thumbs = sorted((run_dir / "assets").glob("thumbs-*/*.jpg"))
    # 9 units x 10 top images over a 12-image probe set: every image, each written once
    assert len(thumbs) == 12
    with Image.open(thumbs[0]) as img:
        assert img.format == "JPEG" and max(img.size) <= 96
    stamp = {p: p.stat().st_mtime_ns for p in thumbs}
    write_report(run_dir)  # regenerating reuses existing thumbnails
    assert {p: p.stat().st_mtime_ns for p in thumbs} == stamp


def test_report_without_images_needs_no_store(tmp_path: Path) -> None:
    run_dir = build_run(tmp_path)
    (tmp_path / "store").rename(tmp_path / "moved")
    with pytest.raises(CliError, match="--no-images"):
        write_report(run_dir)
    write_report(run_dir, images=False)
    assert read_layer_file(run_dir / "assets/data/layer-1.js")["images"] == {}


def test_labels_cannot_inject_markup(tmp_path: Path) -> None:
    run_dir = build_run(tmp_path)
    doc = json.loads((run_dir / "results.json").read_text())
    doc["layers"][0]["units"][0]["label"] = "</script><b>x"
    doc["layers"][0]["name"] = "<i>layer4</i>"
    (run_dir / "results.json").write_text(json.dumps(doc))
    html = write_report(run_dir, images=False).read_text()
    assert "<i>layer4</i>" not in html and "&lt;i&gt;layer4&lt;/i&gt;" in html
    assert "</script><b>" not in (run_dir / "assets/data/layer-0.js").read_text()


def test_missing_results_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="cdissect run"):
        write_report(tmp_path)


def test_report_command_and_analyses_links(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from cdissect_cli.analysis_commands import register

    run_dir = build_run(tmp_path)
    (run_dir / "analyses").mkdir()
    (run_dir / "analyses" / "weights_layer4_fc.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (run_dir / "analyses" / "final_layer_fc.json").write_text(json.dumps(
        {"top1": 0.5, "top5": 0.75, "clip_cos_mean": 0.8, "sentence_model": "sentence:m", "sentence_cos_mean": 0.4}))
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(run_dir / "report.html")
    html = (run_dir / "report.html").read_text()
    assert 'href="analyses/weights_layer4_fc.svg"' in html and '<img src="analyses/weights_layer4_fc.svg"' in html
    assert "top-1 50.00%, top-5 75.00%, CLIP cos 0.8000, sentence:m cos 0.4000" in html


@pytest.mark.slow
def test_html_stays_small_for_five_layers_of_2048_units(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    layers = [LayerResult(
        name=f"layer{i}", labels_key="", activation_keys=[], image_embedding_keys=[], text_embedding_key="",
        concept_ids=rng.integers(0, len(WORDS), size=(2048, 5)), scores=rng.uniform(size=(2048, 5)),
        top_images=rng.integers(0, 1000, size=(2048, 10)), dead=np.zeros(2048, dtype=bool),
        quality_auc=rng.uniform(size=2048), quality_p=rng.uniform(size=2048)) for i in range(5)]
    write_run_folder(tmp_path, RunResult(
        spec=resolve_spec(None, {}), dataset={}, concepts_name="w", concepts_sha256="0", words=WORDS,
        layers=layers))
    html = write_report(tmp_path, images=False)
    assert html.stat().st_size < 20_000
    sizes = [p.stat().st_size for p in (tmp_path / "assets" / "data").glob("layer-*.js")]
    assert len(sizes) == 5 and max(sizes) < 600_000  # one layer's data loads in well under a second


def build_scored_run(tmp_path: Path, select: str = "similarity", heldout_images: int = 40) -> Path:
    """A one-layer run with held-out scores: unit 0 trusted, 1 low by r, 2 low by its interval,
    3 constant on the held-out images, 4 dead."""
    store_url = f"file://{tmp_path / 'store'}"
    store = open_store(store_url)
    images = [ImageSource(name=n, data=d, labels={"class": c}) for n, d, c in make_probe_images(12)]
    manifest = register_dataset(store, "probe", images, shard_size=6)
    k = 5
    ids = np.array([[i % len(WORDS), (i + 1) % len(WORDS)] for i in range(k)])
    heldout = HeldOutQuality(
        correlation=np.array([0.6, 0.1, 0.3, 0.0, 0.0]), correlation_low=np.array([0.5, 0.0, -0.05, -1.0, -1.0]),
        correlation_high=np.array([0.7, 0.2, 0.6, 1.0, 1.0]), auprc=np.array([0.4, 0.1, 0.2, 0.05, 0.05]),
        auprc_base=np.full(k, 0.05), heldout_constant=np.array([False, False, False, True, True]),
        heldout_images=heldout_images)
    layer = LayerResult(
        name="layer4", labels_key="labels/l.safetensors", activation_keys=[], image_embedding_keys=[],
        text_embedding_key="", concept_ids=ids, scores=np.ones((k, 2)), top_images=np.zeros((k, 2), int),
        dead=np.array([False, False, False, False, True]), quality_auc=np.full(k, 0.9), quality_p=np.full(k, 1e-6),
        similarity_rank=np.array([[3, 1]] * k), heldout=heldout)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_run_folder(run_dir, RunResult(
        spec=resolve_spec(None, {"target_model": "resnet18", "layers": "layer4", "select": select}),
        dataset={"name": "probe", "digest": manifest.digest, "num_images": 12, "store_url": store_url,
                 "manifest_key": manifest_key("probe")},
        concepts_name="words", concepts_sha256="0" * 64, words=WORDS, layers=[layer]))
    return run_dir


def test_scored_runs_flag_by_heldout_correlation_and_show_the_scores(tmp_path: Path) -> None:
    run_dir = build_scored_run(tmp_path)
    html = write_report(run_dir, images=False).read_text()
    payload = read_layer_file(run_dir / "assets/data/layer-0.js")
    rows = payload["units"]
    # AUC 0.9 and p 1e-6 would pass the old rule for every unit: the flag now follows the correlation
    assert [row[5] for row in rows] == ["", "low", "low", "low", "dead"]
    assert rows[0][8] == 0.6 and rows[0][9] == [0.5, 0.7] and rows[0][10] == 0.4 and rows[0][11] == 0.05
    assert "0.100 < 0.2" in rows[1][12] and "interval" in rows[2][12] and "constant on the held-out" in rows[3][12]
    assert rows[0][13] == "similarity"
    assert "in-sample" in html and "median correlation" in html and "corr-desc" in html
    cells = re.findall(r'<td class="num">([^<]*)</td>', re.search(r'<tr id="layer-0">(.*?)</tr>', html).group(1))
    assert cells[:3] == ["5", "1", "3"]                            # units, dead, low
    assert cells[4:7] == ["1.0000", "0.200", "0.150"]             # medians of similarity, correlation, AUPRC (live)


def test_a_heldout_split_under_twenty_images_flags_every_live_unit_low(tmp_path: Path) -> None:
    # 13 held-out images (a reference run on a small probe set): unit 0's r = 0.6 in [0.5, 0.7] would pass
    run_dir = build_scored_run(tmp_path, heldout_images=13)
    write_report(run_dir, images=False)
    rows = read_layer_file(run_dir / "assets/data/layer-0.js")["units"]
    assert [row[5] for row in rows] == ["low", "low", "low", "low", "dead"]
    assert "only 13 held-out images" in rows[0][12]
    scores = json.loads((run_dir / "results.json").read_text())["layers"][0]["scores"]
    assert scores["low"] == scores["units_scored"] == 4


def test_simulation_runs_say_held_out_and_which_rank_the_label_had(tmp_path: Path) -> None:
    run_dir = build_scored_run(tmp_path, select="simulation")
    html = write_report(run_dir, images=False).read_text()
    row = read_layer_file(run_dir / "assets/data/layer-0.js")["units"][0]
    assert row[13] == "simulation: similarity rank 3"
    assert "<strong>held-out</strong>" in html and "in-sample" not in html
