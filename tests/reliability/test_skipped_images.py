"""`--on-bad-image skip` with a truncated JPEG: the run names the skipped image, and every top
image is the right picture (rows used to shift by one after the skipped image)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cdissect_common.manifest import load_manifest
from tests.conftest import truncated_jpeg
from tests.integration.test_cli_support import assert_same_labels, results, run_args, run_cli, run_dir_of, write_probe

pytestmark = pytest.mark.slow
BAD = "green/img_00004_cut.jpg"  # sorts into the middle of the probe set


def top_image_names(shared, run_dir: Path) -> dict[tuple[str, int], list[str]]:
    """(layer, unit) → names of its top images, through the run's registered manifest."""
    doc = results(run_dir)
    manifest = load_manifest(shared.open_store(), doc["dataset"]["name"])
    names = [entry.name for shard in manifest.shards for entry in shard.images]
    return {(layer["name"], unit["unit"]): [names[i] for i in unit["top_images"]]
            for layer in doc["layers"] for unit in layer["units"]}


def test_truncated_jpeg_is_reported_and_top_images_stay_right(fs_shared, tiny_clip_checkpoint: Path,
                                                              tmp_path: Path) -> None:
    clean = write_probe(tmp_path / "clean", 12, seed=5)
    with_bad = tmp_path / "with-bad"
    shutil.copytree(clean, with_bad)
    (with_bad / BAD).write_bytes(truncated_jpeg())
    words = tmp_path / "words.txt"
    words.write_text("red\ngreen\nblue\ncircle\nsquare\ndark\n")

    def run(probe: Path, env_dir: str, *extra: str, expect: int | None = 0):
        args = run_args(probe, words, tiny_clip_checkpoint, *extra, layers="layer4", shard_size=3)
        return run_cli(args, fs_shared.cli_env(tmp_path / env_dir), timeout=600, expect=expect)

    refused = run(with_bad, "refused", expect=2)          # an unreadable image is bad input
    assert BAD in refused.stderr and "--on-bad-image skip" in refused.stderr
    reference = run(clean, "clean")
    skipped = run(with_bad, "skip", "--on-bad-image", "skip")
    printed = " ".join((skipped.stdout + skipped.stderr).split())  # the console wraps long lines
    assert f"skipped 1 unreadable image(s) of the probe set (on_bad_image=skip): {BAD}" in printed
    doc = results(run_dir_of(skipped))
    assert doc["dataset"]["num_images"] == 12
    assert doc["dataset"]["skipped_images"] == 1 and doc["dataset"]["skipped_names"] == [BAD]
    assert_same_labels(run_dir_of(skipped), run_dir_of(reference))
    assert top_image_names(fs_shared, run_dir_of(skipped)) == top_image_names(fs_shared, run_dir_of(reference))
