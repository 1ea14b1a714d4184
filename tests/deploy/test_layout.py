"""The layout rules of docs/CONTRACTS.md, checked on the real sources and the real wheels.

- Deployables import nothing of each other except ``cdissect_common`` (and its ``cdissect.v1``
  stubs); the one documented exception is the CLI's ``demo`` command, which drives the shapes
  world (its torch-free generator and scorer).
- CLI-only code and data (concept sets, reference results, probe sets) ship in the CLI's wheel
  and in none of the services' (the images install exactly these wheels).
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from deploy_helpers import REPO_ROOT

# folder -> its import package
DEPLOYABLES = {
    "services/common": "cdissect_common",
    "services/labeler": "cdissect_labeler",
    "services/activations": "cdissect_activations",
    "services/embedder": "cdissect_embedder",
    "cli": "cdissect_cli",
    "shapes_world": "cdissect_shapes",
}
SHARED = {"cdissect_common", "cdissect"}
ALLOWED = {("cdissect_cli", "cdissect_shapes", "demo_command.py")}  # `cdissect demo` runs the shapes world
CLI_ONLY = ("concepts.py", "probesets.py", "probeset_download.py", "concept_sets/20k.txt",
            "reference_results/resnet50_imagenet_broden.csv")


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("folder", DEPLOYABLES)
def test_deployables_import_only_common_of_each_other(folder: str) -> None:
    own = DEPLOYABLES[folder]
    others = set(DEPLOYABLES.values()) - SHARED - {own}
    bad = []
    for path in sorted((REPO_ROOT / folder / own).rglob("*.py")):
        for name in sorted(_imported_top_levels(path) & others):
            if (own, name, path.name) not in ALLOWED:
                bad.append(f"{path.relative_to(REPO_ROOT)} imports {name}")
    assert not bad, "deployables may share only cdissect_common (docs/CONTRACTS.md):\n" + "\n".join(bad)


def _wheel_files(folder: str, tmp_path: Path) -> list[str]:
    """Names inside the wheel pip builds from a copy of the distribution's folder."""
    source = tmp_path / "src"
    shutil.copytree(REPO_ROOT / folder, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           str(source), "-w", str(tmp_path / "wheel")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    return zipfile.ZipFile(wheel).namelist()


@pytest.mark.parametrize("folder", ["services/common", "services/labeler", "services/activations",
                                    "services/embedder"])
def test_service_wheels_ship_no_cli_only_code_or_data(folder: str, tmp_path: Path) -> None:
    names = _wheel_files(folder, tmp_path)
    shipped = [n for n in names if n.endswith(CLI_ONLY) or n.endswith((".txt", ".csv")) and ".dist-info/" not in n]
    assert not shipped, f"{folder}'s wheel (installed in the service image) ships CLI-only files: {shipped}"


def test_cli_wheel_ships_the_concept_sets_and_reference_results(tmp_path: Path) -> None:
    names = _wheel_files("cli", tmp_path)
    for needed in CLI_ONLY:
        assert any(n.endswith(needed) for n in names), f"the CLI wheel lacks {needed}"
