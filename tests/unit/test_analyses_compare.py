"""`cdissect compare`: agreement and |Δ similarity| per layer, with planted differences."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cdissect_cli.analyses.compare import compare_files, read_descriptions, reference_csv
from cdissect_cli.analysis_commands import register
from cdissect_cli.errors import CliError


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def _rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        return header, list(reader)


def _write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_two_copies_of_a_released_csv_agree_fully(tmp_path: Path) -> None:
    source = reference_csv("resnet50")
    copy = shutil.copy(source, tmp_path / "copy.csv")
    result = compare_files(source, copy)
    assert [layer.layer for layer in result.layers] == ["conv1", "layer1", "layer2", "layer3", "layer4"]
    assert result.total_matched == 64 + 256 + 512 + 1024 + 2048
    for layer in result.layers:
        assert layer.agreement == 1.0 and layer.abs_delta_max == 0.0
        assert not layer.only_in_a and not layer.only_in_b and not layer.label_changes


def test_planted_changes_are_exactly_what_is_reported(tmp_path: Path) -> None:
    header, rows = _rows(reference_csv("resnet18_places"))
    index = {(r[0], int(r[1])): i for i, r in enumerate(rows)}
    changed = rows[:]
    label_changes = {("layer4", 7): "planted word", ("conv1", 3): "another word"}
    for key, word in label_changes.items():
        changed[index[key]] = changed[index[key]][:2] + [word] + changed[index[key]][3:]
    deltas = {("layer3", 100): 0.25, ("layer3", 5): -0.125}
    for key, delta in deltas.items():
        row = changed[index[key]]
        changed[index[key]] = row[:3] + [repr(float(row[3]) + delta)] + row[4:]
    removed = [("layer2", 11), ("layer4", 0)]
    changed = [r for r in changed if (r[0], int(r[1])) not in removed]
    changed.append(["layer4", "99999", "extra", "0.5"])
    b = _write(tmp_path / "b.csv", header, changed)

    result = compare_files(reference_csv("resnet18_places"), b)
    by_layer = {layer.layer: layer for layer in result.layers}
    reported = {(name, c["unit"]): c["b"] for name, layer in by_layer.items() for c in layer.label_changes}
    assert reported == label_changes
    assert by_layer["layer3"].abs_delta_max == pytest.approx(0.25, abs=1e-6)
    assert by_layer["layer3"].abs_delta_mean == pytest.approx(0.375 / by_layer["layer3"].matched, abs=1e-6)
    assert by_layer["layer1"].abs_delta_max == 0.0 and by_layer["layer1"].agreement == 1.0
    assert {(n, u) for n, layer in by_layer.items() for u in layer.only_in_a} == set(removed)
    assert {(n, u) for n, layer in by_layer.items() for u in layer.only_in_b} == {("layer4", 99999)}
    n4 = by_layer["layer4"].matched
    assert by_layer["layer4"].agreement == pytest.approx((n4 - 1) / n4)


def test_compare_command_writes_json(tmp_path: Path) -> None:
    copy = shutil.copy(reference_csv("resnet50"), tmp_path / "ours.csv")
    out = tmp_path / "cmp.json"
    result = CliRunner().invoke(_app(), ["compare", str(copy), "--reference", "resnet50", "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["agreement"] == 1.0 and doc["matched"] == 3904
    assert "100.00%" in result.output


def test_bad_csvs_name_the_problem(tmp_path: Path) -> None:
    bad = _write(tmp_path / "bad.csv", ["layer", "unit", "label"], [["fc", "0", "x"]])
    with pytest.raises(CliError, match="lacks the column.*description"):
        read_descriptions(bad)
    dup = _write(tmp_path / "dup.csv", ["layer", "unit", "description", "similarity"],
                 [["fc", "0", "x", "1"], ["fc", "0", "y", "2"]])
    with pytest.raises(CliError, match="dup.csv:3.*appears twice"):
        read_descriptions(dup)
    with pytest.raises(CliError, match="shipped references are: resnet50, resnet18_places"):
        reference_csv("vgg")


def test_compare_shows_the_heldout_scores_of_runs_that_have_them(tmp_path: Path) -> None:
    header = ["layer", "unit", "description", "similarity", "dead", "quality_auc", "correlation", "auprc"]
    ours = _write(tmp_path / "ours.csv", header, [["conv1", "0", "red", "3.0", "false", "0.9", "0.6", "0.4"],
                                                  ["conv1", "1", "top", "2.0", "false", "0.8", "0.2", "0.1"],
                                                  ["conv1", "2", "blue", "1.0", "false", "0.7", "0.4", "0.3"]])
    theirs = _write(tmp_path / "theirs.csv", header[:4], [["conv1", "0", "red", "0.1"], ["conv1", "1", "left", "0.1"]])
    result = compare_files(ours, theirs)
    layer = result.layers[0]
    assert layer.scores_a == {"correlation_mean": pytest.approx(0.4), "correlation_median": 0.4,
                              "auprc_mean": pytest.approx(0.8 / 3), "auprc_median": 0.3}
    assert layer.scores_b is None                     # a released CSV has no such columns
    out = CliRunner().invoke(_app(), ["compare", str(ours), str(theirs), "--out", str(tmp_path / "c.json")])
    assert out.exit_code == 0, out.output
    assert "0.400 / 0.400" in out.output and "corr A" in out.output and "0.267 / 0.300" in out.output
    assert json.loads((tmp_path / "c.json").read_text())["layers"][0]["scores_a"]["auprc_median"] == 0.3


def test_compare_leaves_dead_units_out_of_the_layer_scores(tmp_path: Path) -> None:
    # a dead unit's r = 0 and AUPRC at chance would pull the layer's figures down; results.json skips them too
    header = ["layer", "unit", "description", "similarity", "dead", "quality_auc", "correlation", "auprc"]
    ours = _write(tmp_path / "ours.csv", header, [["conv1", "0", "red", "3.0", "false", "0.9", "0.6", "0.4"],
                                                  ["conv1", "1", "top", "2.0", "false", "0.8", "0.2", "0.2"],
                                                  ["conv1", "2", "blue", "0.0", "true", "", "0", "0.05"]])
    layer = compare_files(ours, ours).layers[0]
    assert layer.scores_a == {"correlation_mean": pytest.approx(0.4), "correlation_median": pytest.approx(0.4),
                              "auprc_mean": pytest.approx(0.3), "auprc_median": pytest.approx(0.3)}
