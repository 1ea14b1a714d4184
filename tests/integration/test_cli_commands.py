"""`cdissect up/status/down`, discovery commands, datasets, and clear messages for bad input.

One set of services is started with `cdissect up` for the whole module (the slow part), and
every command after it finds them through the state file, as a user's later commands would.
"""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from test_cli_support import (
    REPO, assert_no_torch, child_pids, labels_by_unit, make_env, results, run_args, run_cli, run_dir_of, services_up,
    start_cli, stop_process, wait_for, write_probe, write_words)

from cdissect_cli.local import pid_alive


@pytest.fixture(scope="module")
def up_env(tmp_path_factory: pytest.TempPathFactory):
    """An isolated environment with services started by `cdissect up` (stopped by `down` after)."""
    yield from services_up(tmp_path_factory.mktemp("up"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("inputs")
    return write_probe(tmp / "probe", 12, seed=5), write_words(tmp / "words.txt")


def test_help_of_the_installed_console_script_needs_no_torch(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    proc = run_cli(["--help"], env)
    for command in ("run", "up", "down", "status", "models", "layers", "concepts", "datasets", "demo"):
        assert command in proc.stdout
    import subprocess
    script = Path(REPO / ".venv" / "bin" / "cdissect")
    assert subprocess.run([str(script), "run", "--help"], env=env, capture_output=True, text=True,
                          timeout=60).returncode == 0


@pytest.mark.slow
def test_up_state_status_and_a_second_up(up_env: dict[str, str]) -> None:
    state = json.loads((Path(up_env["XDG_CACHE_HOME"]) / "cdissect" / "local-services.json").read_text())
    assert sorted(state["services"]) == ["activations", "embedder", "labeler"]
    status = run_cli(["status"], up_env)
    assert status.stdout.count("SERVING") == 3
    again = run_cli(["up"], up_env)
    assert "already running" in again.stderr


@pytest.mark.slow
def test_models_and_layers_come_from_the_services(up_env: dict[str, str]) -> None:
    models = run_cli(["models"], up_env).stdout
    assert "resnet18" in models and "ViT-B/16" in models
    layers = run_cli(["layers", "resnet18", "--weights", "none"], up_env).stdout
    assert "layer4" in layers and "conv1" in layers


@pytest.mark.slow
def test_unknown_model_and_layer_name_the_fix(up_env: dict[str, str], inputs: tuple[Path, Path],
                                              tiny_clip_checkpoint: Path) -> None:
    probe, words = inputs
    args = run_args(probe, words, tiny_clip_checkpoint, layers="layer4")
    bad_model = run_cli([*args, "--model", "resnet9999"], up_env, expect=None)
    assert bad_model.returncode != 0 and "resnet9999" in bad_model.stderr
    assert "activations service" in bad_model.stderr and "INVALID_ARGUMENT" in bad_model.stderr
    bad_layer = run_cli([*args, "--layers", "layer9"], up_env, expect=None)
    assert bad_layer.returncode != 0 and "layer9" in bad_layer.stderr
    assert "cdissect layers" in bad_layer.stderr or "layer4" in bad_layer.stderr
    assert "Traceback" not in bad_model.stderr + bad_layer.stderr


@pytest.mark.slow
def test_run_on_up_services_and_datasets_commands(up_env: dict[str, str], inputs: tuple[Path, Path],
                                                  tiny_clip_checkpoint: Path) -> None:
    probe, words = inputs
    added = run_cli(["datasets", "add", "mini", str(probe), "--shard-size", "5"], up_env)
    assert "registered dataset mini: 12 images in 3 shard(s)" in added.stdout
    assert "unchanged" in run_cli(["datasets", "add", "mini", str(probe), "--shard-size", "5"], up_env).stdout
    listing = run_cli(["datasets", "list"], up_env).stdout
    assert "mini" in listing
    proc = run_cli([*run_args(probe, words, tiny_clip_checkpoint, layers="layer4"), "--probe-set", "mini"], up_env)
    assert "starting local services" not in proc.stderr and "(up)" in proc.stderr
    doc = results(run_dir_of(proc))
    assert doc["dataset"]["name"] == "mini" and doc["dataset"]["shards"] == 3
    assert len(labels_by_unit(run_dir_of(proc))) == 512
    # The echoed job spec reproduces the run: every artifact is reused.
    again = run_cli(["run", "--spec", str(run_dir_of(proc) / "job.yaml"), "--no-progress"], up_env)
    reused = results(run_dir_of(again))["reused"]
    assert all(counts["computed"] == 0 for counts in reused.values()), reused
    assert labels_by_unit(run_dir_of(again)) == labels_by_unit(run_dir_of(proc))


def test_unknown_dataset_and_concept_set_fail_before_any_service_starts(
        tmp_path: Path, inputs: tuple[Path, Path], tiny_clip_checkpoint: Path) -> None:
    probe, words = inputs
    env = make_env(tmp_path)
    args = run_args(probe, words, tiny_clip_checkpoint)
    no_dataset = run_cli([*args, "--probe-set", "no_such_set"], env, expect=2)
    assert "no_such_set" in no_dataset.stderr and "cdissect datasets add" in no_dataset.stderr
    no_concepts = run_cli([*args, "--concept-set", "no_such_words"], env, expect=2)
    assert "no_such_words" in no_concepts.stderr and "20k" in no_concepts.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    empty_run = run_cli([*args, "--concept-set", str(empty)], env, expect=2)
    assert "no concepts" in empty_run.stderr and "one concept per line" in empty_run.stderr
    bad_flag = run_cli([*args, "--pooling", "median"], env, expect=2)
    assert "avg, max" in bad_flag.stderr
    for proc in (no_dataset, no_concepts, empty_run, bad_flag):
        assert "starting local services" not in proc.stderr and "Traceback" not in proc.stderr


def test_bad_selection_and_evaluation_settings_fail_before_any_work(
        tmp_path: Path, inputs: tuple[Path, Path], tiny_clip_checkpoint: Path) -> None:
    """--eval-fraction outside (0, 0.5], a held-out split under 20 images, fewer than 1 candidate:
    exit 2 with the fix, no service started (the 12-image probe holds out ~2 images)."""
    probe, words = inputs
    env = make_env(tmp_path)
    args = run_args(probe, words, tiny_clip_checkpoint)
    fraction = run_cli([*args, "--eval-fraction", "0.6"], env, expect=2)
    assert "(0, 0.5]" in fraction.stderr and "--eval-fraction" in fraction.stderr
    zero = run_cli([*args, "--eval-fraction", "0"], env, expect=2)
    assert "(0, 0.5]" in zero.stderr
    candidates = run_cli([*args, "--select", "simulation", "--candidates", "0"], env, expect=2)
    assert "at least 1 candidate" in candidates.stderr
    small = run_cli([*args, "--select", "simulation"], env, expect=2)
    assert "held-out split has" in small.stderr and "at least 20" in small.stderr
    assert "--eval-fraction" in small.stderr and "larger probe set" in small.stderr
    chosen = run_cli([*args, "--eval-fraction", "0.5"], env, expect=2)      # a chosen split: refused too
    assert "at least 20" in chosen.stderr
    select = run_cli([*args, "--select", "best"], env, expect=2)
    assert "similarity, simulation" in select.stderr
    for proc in (fraction, zero, candidates, small, chosen, select):
        assert "starting local services" not in proc.stderr and "Traceback" not in proc.stderr


def test_corrupt_image_is_named_with_error_policy(tmp_path: Path, tiny_clip_checkpoint: Path) -> None:
    probe = write_probe(tmp_path / "probe", 6)
    (probe / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    words = write_words(tmp_path / "words.txt")
    env = make_env(tmp_path)
    proc = run_cli(run_args(probe, words, tiny_clip_checkpoint), env, expect=1)
    assert "broken.png" in proc.stderr and "on_bad_image" in proc.stderr
    assert "starting local services" not in proc.stderr


@pytest.mark.slow
def test_corrupt_image_is_skipped_and_counted_with_skip_policy(up_env: dict[str, str], tmp_path: Path,
                                                               tiny_clip_checkpoint: Path) -> None:
    probe = write_probe(tmp_path / "probe", 12)
    (probe / "red" / "broken.png").write_bytes(b"garbage")
    words = write_words(tmp_path / "words.txt")
    proc = run_cli([*run_args(probe, words, tiny_clip_checkpoint, layers="layer4"), "--on-bad-image", "skip"],
                   up_env)
    doc = results(run_dir_of(proc))
    assert doc["dataset"]["num_images"] == 12 and doc["dataset"]["skipped_images"] == 1
    assert "skipped 1 unreadable image" in proc.stderr
    too_many = run_cli([*run_args(probe, words, tiny_clip_checkpoint, layers="layer4"), "--on-bad-image", "skip",
                        "--top-images", "50"], up_env, expect=2)
    assert "top_images=50 exceeds the 12 images" in too_many.stderr


def test_sigterm_while_local_services_start_stops_all_of_them(tmp_path: Path, tiny_clip_checkpoint: Path) -> None:
    probe, words = write_probe(tmp_path / "probe", 12), write_words(tmp_path / "words.txt")
    env = make_env(tmp_path)
    proc = start_cli(run_args(probe, words, tiny_clip_checkpoint), env)
    try:
        children = wait_for(lambda: [pid for pid, cmd in child_pids(proc.pid) if "-m cdissect_" in cmd]
                            if len(child_pids(proc.pid)) >= 3 else None, 120, "three local service processes")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        stop_process(proc)
    assert_no_torch(env)
    assert proc.returncode == 128 + signal.SIGTERM and "stopped by signal 15" in err, err[-3000:]
    assert len(children) == 3 and not any(pid_alive(pid) for pid in children)
