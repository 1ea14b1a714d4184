"""One exit-code rule for every command: bad input exits 2 with a message and no traceback.

The rule (cdissect_cli.errors, README "Exit codes", docs/CONTRACTS.md): 2 when the input is wrong
(a flag, an argument, a file or setting it names, a job spec, an image, a request a service refuses
as INVALID_ARGUMENT), 1 when valid work failed (a service, the store, a download). Before, the same
kind of input error exited 1 in some commands and 2 in others, and a non-UTF-8 job spec, CSV or
config file printed a traceback.

The sweep runs `cdissect_cli.app.main` in-process (what the console script runs): any exception
other than SystemExit escaping it is a traceback for the user. No service is started: the run cases
name endpoints on a closed port, so an input that slipped through fails fast with exit 1 instead.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli_support import make_env, run_cli, write_probe, write_words

from cdissect_cli.app import main

LATIN1 = "résumé\n".encode("latin-1")
CLOSED = "127.0.0.1:1"   # nothing listens on port 1: a run that gets past its input checks fails fast


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A good probe folder, one with a broken image, a word list, a fake run and bad files of each kind."""
    tmp = tmp_path_factory.mktemp("inputs")
    broken = write_probe(tmp / "broken_probe", 6)
    (broken / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    run = tmp / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"layers": [{"name": "fc", "units": [
        {"unit": 0, "label": "red", "similarity": 1.0}]}], "job": {}, "dataset": {}}))
    (run / "descriptions.csv").write_text("layer,unit,description,similarity\nfc,0,red,1.0\n")
    damaged = tmp / "damaged_run"
    damaged.mkdir()
    (damaged / "results.json").write_text("{not json")
    paths = {"probe": write_probe(tmp / "probe", 6), "broken_probe": broken, "words": write_words(tmp / "words.txt"),
             "run": run, "damaged_run": damaged, "good_csv": run / "descriptions.csv", "missing": tmp / "missing"}
    paths["notes.pth"] = tmp / "notes.pth"
    paths["notes.pth"].write_text("these are my notes, not weights\n")
    for name in ("latin1.yaml", "latin1.txt", "latin1.csv"):
        (tmp / name).write_bytes(LATIN1)
        paths[name] = tmp / name
    return paths


def _run(f: dict[str, Path], *extra: str, probe: str = "probe", similarity: str = "soft_wpmi",
         model: tuple[str, ...] = ("--model", "resnet18", "--weights", "none")) -> list[str]:
    """A valid run of the 6-image probe (top_k and top_images fit it) on closed endpoints, plus `extra`."""
    fits = ["--param", "top_k=5"] if similarity == "soft_wpmi" else []
    return ["run", *model, "--layers", "layer4", "--probe-set", str(f[probe]),
            "--concept-set", str(f["words"]), "--similarity", similarity, *fits, "--top-images", "3",
            "--no-progress", "--retry-timeout", "0", "--embedder", CLOSED, "--activations", CLOSED,
            "--labeler", CLOSED, *extra]


# (command line, words the message must contain)
CASES = {
    "run: top_k=0": (lambda f: _run(f, "--param", "top_k=0"), ["top_k of soft_wpmi must be an integer ≥ 1"]),
    "run: top_k=2.5": (lambda f: _run(f, "--param", "top_k=2.5"), ["must be an integer ≥ 1", "got 2.5"]),
    "run: rank_reorder top_fraction=2": (lambda f: _run(f, "--param", "top_fraction=2", similarity="rank_reorder"),
                                         ["top_fraction of rank_reorder", "(0, 1]"]),
    "run: spec not UTF-8": (lambda f: ["run", "--spec", str(f["latin1.yaml"])], ["latin1.yaml", "not UTF-8"]),
    "run: concept file not UTF-8": (lambda f: _run(f, "--concept-set", str(f["latin1.txt"])),
                                    ["latin1.txt", "not UTF-8"]),
    "run: config not UTF-8": (lambda f: _run(f, "--config", str(f["latin1.yaml"])), ["latin1.yaml", "not UTF-8"]),
    "run: broken image": (lambda f: _run(f, probe="broken_probe"),
                          ["'red/broken.png' is not usable", "--on-bad-image skip"]),
    "run: a checkpoint without its architecture": (lambda f: _run(f, model=("--model", str(f["notes.pth"]))),
                                                   ["without its architecture", "resnet50:/"]),
    "run: weights that are not a checkpoint": (lambda f: _run(f, model=("--model", f"resnet18:{f['notes.pth']}")),
                                               ["notes.pth is not a checkpoint", "starts with text"]),
    "run: timm weights that are not a checkpoint": (
        lambda f: _run(f, model=("--model", f"timm:resnet18:{f['notes.pth']}")), ["notes.pth is not a checkpoint"]),
    "layers: a checkpoint without its architecture": (lambda f: ["layers", "/ckpt/r50.pth"],
                                                      ["without its architecture", "resnet50:/ckpt/r50.pth"]),
    "run: unknown similarity": (lambda f: _run(f, "--similarity", "cosine"), ["unknown similarity function"]),
    "run: unknown option": (lambda f: ["run", "--no-such-flag"], ["No such option"]),
    "layers: bad endpoint": (lambda f: ["layers", "resnet18", "--activations", "host:notaport"],
                             ["activations endpoint"]),
    "models: missing config": (lambda f: ["models", "--config", str(f["missing"])], ["does not exist"]),
    "concepts: unknown set": (lambda f: ["concepts", "no_such_set"], ["unknown concept set"]),
    "concepts: not UTF-8": (lambda f: ["concepts", str(f["latin1.txt"])], ["latin1.txt", "not UTF-8"]),
    "datasets add: missing folder": (lambda f: ["datasets", "add", "mini", str(f["missing"])], ["missing"]),
    "datasets add: bad name": (lambda f: ["datasets", "add", "bad/name", str(f["probe"])], ["invalid dataset name"]),
    "datasets add: broken image": (lambda f: ["datasets", "add", "mini", str(f["broken_probe"])],
                                   ["'red/broken.png' is not usable", "--on-bad-image skip"]),
    "report: missing run": (lambda f: ["report", str(f["missing"])], ["does not exist"]),
    "report: damaged run": (lambda f: ["report", str(f["damaged_run"])], ["not valid JSON"]),
    "compare: missing CSV": (lambda f: ["compare", str(f["missing"]), str(f["good_csv"])], ["does not exist"]),
    "compare: CSV not UTF-8": (lambda f: ["compare", str(f["latin1.csv"]), str(f["good_csv"])],
                               ["latin1.csv", "not UTF-8"]),
    "compare: no second file": (lambda f: ["compare", str(f["good_csv"])], ["--reference"]),
    "compare: unknown reference": (lambda f: ["compare", str(f["good_csv"]), "--reference", "nope"],
                                   ["unknown reference"]),
    "eval labels: missing run": (lambda f: ["eval", "labels", str(f["missing"])], ["does not exist"]),
    "eval labels: CSV not UTF-8": (lambda f: ["eval", "labels", str(f["run"]), "--labels", str(f["latin1.csv"])],
                                   ["latin1.csv", "not UTF-8"]),
    "eval final-layer: unknown class names": (lambda f: ["eval", "final-layer", str(f["run"]), "--no-embed",
                                                         "--class-names", "nope"], ["neither a file"]),
    "explain compose: unknown layer": (lambda f: ["explain", "compose", str(f["run"]), "--layer", "layer9"],
                                       ["no layer 'layer9'"]),
    "analyze weights: missing file": (lambda f: ["analyze", "weights", str(f["run"]), "--from", "layer4", "--to",
                                                 "fc", "--weights", str(f["missing"])], ["does not exist"]),
    "demo: unknown selection": (lambda f: ["demo", "--select", "best"], ["not a selection"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_a_message_and_no_traceback(
        case: str, files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    for key, value in make_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    argv, words = CASES[case]
    with pytest.raises(SystemExit) as exit_:      # any other exception would be a traceback for the user
        main(argv(files))
    err = capsys.readouterr().err
    assert exit_.value.code == 2, f"{case}: exit {exit_.value.code}\n{err}"
    for word in words:
        assert word in err, f"{case}: {word!r} not in\n{err}"
    assert "Traceback" not in err and "starting local services" not in err


def test_the_console_script_prints_no_traceback_for_a_non_utf8_spec(files: dict[str, Path], tmp_path: Path) -> None:
    proc = run_cli(["run", "--spec", str(files["latin1.yaml"])], make_env(tmp_path), expect=2)
    assert "not UTF-8" in proc.stderr and "Traceback" not in proc.stderr


def test_a_failure_of_valid_work_exits_1(files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Valid input, but the services cannot be reached: a failure, exit 1."""
    for key, value in make_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as exit_:
        main(_run(files))
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "UNAVAILABLE" in err and "Traceback" not in err, err
