"""`cdissect demo --json` end to end on a reduced shapes-world probe set, scored against the truth.

The real product path: local services, filesystem store, the shipped shapes CNN and shapes
CLIP, the world's concept set. Goals (issue 4): final-layer top-1 >= 0.9 and top-3 = 1.0,
planted units 100%. Issue 10: the planted SAE's latents (the fc readout per position) 100%, and
the trained SAE's selective latents labelled at least as well as layer3's selective conv units.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SUPPORT = Path(__file__).resolve().parents[1] / "integration" / "test_cli_support.py"


def _support():
    """The CLI test helpers (wrapped CLI process with the no-torch check), imported by path."""
    name = "cdissect_cli_test_support"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SUPPORT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.mark.slow
def test_demo_labels_the_final_layer_and_planted_units_correctly(tmp_path: Path) -> None:
    from cdissect_shapes.demo import DEMO

    support = _support()
    env = support.make_env(tmp_path)
    n_images = int(DEMO["n_images_ci"])
    proc = support.run_cli(["demo", "--json", "--images", str(n_images)], env, timeout=1500)
    scores = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("run_dir", "report", "final_top1", "final_top3", "planted_top1", "conv_selective_top1",
                "conv_selective_top3", "conv_top1", "conv_top3", "n_final", "n_planted", "n_conv"):
        assert key in scores, key
    run_dir = Path(scores["run_dir"])
    assert (run_dir / "descriptions.csv").is_file() and (run_dir / "results.json").is_file()
    assert scores["report"] and Path(scores["report"]).is_file()
    assert scores["n_final"] > 0 and scores["n_planted"] > 0
    assert scores["final_top1"] >= 0.9, scores
    assert scores["final_top3"] == 1.0, scores
    assert scores["planted_top1"] == 1.0, scores
    assert scores["planted_sae_top1"] == 1.0, scores
    assert scores["n_sae"] > 0 and scores["n_sae_selective"] > 0, scores
    assert scores["sae_selective_top1"] >= scores["sae_layer_conv_selective_top1"], scores
    sae_runs = [json.loads((Path(d) / "results.json").read_text()) for d in scores["sae_run_dirs"]]
    assert [r["job"]["features"].rsplit("/", 1)[-1] for r in sae_runs] == [
        "shapes_sae_planted.safetensors", "shapes_sae.safetensors"]
    doc = json.loads((run_dir / "results.json").read_text())
    assert doc["dataset"]["num_images"] == n_images
    assert [layer["name"] for layer in doc["layers"]] == list(DEMO["layers"])
