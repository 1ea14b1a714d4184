"""Derive an image's Python requirements from the repository's requirements.lock at build time.

The images install exactly the versions the tests run with. Two commands, both used by the
Dockerfiles in this folder:

  python lockdeps.py requirements LOCK PYPROJECT...
      print `name==version` for every third-party dependency declared by the given
      pyproject.toml files, with the version taken from LOCK (the transitive ones are pinned by
      passing LOCK to pip as --constraint). A dependency missing from LOCK is an error.
  python lockdeps.py verify LOCK
      check that every distribution installed in the running interpreter is pinned in LOCK at
      the same version (a local label such as +cpu is ignored); list every mismatch.

Standard library only: it runs in the bare build stage before anything is installed.
"""
from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

# Our own distributions are installed from the source tree with --no-deps; the packaging
# tools come with the base image's venv and are not part of the application's lock.
OWN_PREFIX = "cdissect-"
TOOLING = {"pip", "setuptools", "wheel"}
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


class LockError(ValueError):
    """The lock and a pyproject (or the installed environment) disagree."""


def normalize(name: str) -> str:
    """PEP 503 name normalisation: `PyYAML`, `pyyaml` and `py_yaml` compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, tuple[str, str]]:
    """{normalized name: (name as written, version)} from `name==version` lines."""
    pins: dict[str, tuple[str, str]] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "==" not in line:
            raise LockError(f"{path}:{number}: {raw.strip()!r} is not an exact pin; write it as name==version")
        name, version = (part.strip() for part in line.split("==", 1))
        pins[normalize(name)] = (name, version.split(";", 1)[0].strip())
    return pins


def direct_dependencies(pyproject: Path) -> list[str]:
    """Names of the third-party dependencies a pyproject.toml declares (own packages left out)."""
    try:
        project = tomllib.loads(pyproject.read_text())["project"]
    except (OSError, tomllib.TOMLDecodeError, KeyError) as exc:
        raise LockError(f"cannot read [project] from {pyproject}: {exc}") from None
    names = []
    for spec in project.get("dependencies", []):
        match = _NAME.match(spec)
        if match is None:
            raise LockError(f"{pyproject}: cannot parse the dependency {spec!r}")
        if not normalize(match.group(1)).startswith(OWN_PREFIX):
            names.append(match.group(1))
    return names


def requirements(lock: Path, pyprojects: list[Path]) -> list[str]:
    """Exact pins, from the lock, of the direct dependencies of the given distributions."""
    pins = read_lock(lock)
    out: dict[str, str] = {}
    for pyproject in pyprojects:
        for name in direct_dependencies(pyproject):
            key = normalize(name)
            if key not in pins:
                raise LockError(f"{name} is a dependency in {pyproject} but is not pinned in {lock}; "
                                f"add `{name}==<version>` to the lock (the version the tests use)")
            written, version = pins[key]
            out[key] = f"{written}=={version}"
    return [out[key] for key in sorted(out)]


def public_version(version: str) -> str:
    """`2.14.1+cpu` -> `2.14.1` (PEP 440 local labels name a build, not a release)."""
    return version.split("+", 1)[0]


def installed_distributions() -> dict[str, str]:
    """Name -> version of the distributions installed in this environment.

    Copies vendored inside another package (setuptools/_vendor, which pkg_resources puts on
    sys.path once anything imports it, as `clip` does) are not installed distributions: skip them.
    """
    found = {}
    for dist in metadata.distributions():
        if "_vendor" in Path(str(dist.locate_file(""))).parts:
            continue
        found.setdefault(dist.metadata["Name"], dist.version)
    return found


def verify(lock: Path, installed: dict[str, str] | None = None) -> list[str]:
    """Problems with the installed distributions against the lock; an empty list means all pinned."""
    pins = read_lock(lock)
    if installed is None:
        installed = installed_distributions()
    problems = []
    for name, version in sorted(installed.items(), key=lambda item: normalize(item[0])):
        key = normalize(name)
        if key.startswith(OWN_PREFIX) or key in TOOLING:
            continue
        if key not in pins:
            problems.append(f"{name} {version} is installed but not pinned in {lock}")
        elif public_version(version) != public_version(pins[key][1]):
            problems.append(f"{name} {version} is installed but {lock} pins {pins[key][1]}")
    return problems


def main(argv: list[str]) -> int:
    usage = "usage: lockdeps.py requirements LOCK PYPROJECT... | lockdeps.py verify LOCK"
    if len(argv) < 2 or argv[0] not in {"requirements", "verify"}:
        print(usage, file=sys.stderr)
        return 2
    lock = Path(argv[1])
    if not lock.is_file():
        print(f"lock file {lock} not found; pass the path of requirements.lock", file=sys.stderr)
        return 2
    try:
        if argv[0] == "requirements":
            if len(argv) < 3:
                print(usage, file=sys.stderr)
                return 2
            print("\n".join(requirements(lock, [Path(p) for p in argv[2:]])))
            return 0
        problems = verify(lock)
    except LockError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
