"""What a container built from one of our Dockerfiles runs: ENTRYPOINT, CMD, ENV, WORKDIR, COPY.

Only the final stage counts (that is the image); shell-form ENTRYPOINT/CMD become
``["/bin/sh", "-c", ...]`` as Docker does. ``$VAR``/``${VAR}`` in ENV values expand from the
variables set before them (and the base image's PATH), as Docker expands them at build time.
COPY as Docker copies: a relative destination is under the WORKDIR; with several sources or a
destination ending in ``/``, a file lands in the destination folder under its own name and a
folder's contents land in the destination folder (a ``--from`` source counts as a file there:
the build stage's tree is not known here). The build context is the repository root, the
folder above ``docker/``.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

# PATH of the Debian-based python base images (what `$PATH` means in an ENV line).
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class ImageConfig:
    """The runtime configuration of an image's final stage."""

    dockerfile: Path
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    copies: dict[str, str] = field(default_factory=dict)  # image path -> source ("repo path" or "--from=stage path")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _exec_form(rest: str) -> list[str]:
    if rest.startswith("["):
        return [str(part) for part in json.loads(rest)]
    return ["/bin/sh", "-c", rest]


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), value)


def _env_pairs(rest: str) -> list[tuple[str, str]]:
    if "=" not in rest.split()[0]:           # legacy form: ENV KEY value with spaces
        key, _, value = rest.partition(" ")
        return [(key, value.strip())]
    return [tuple(token.split("=", 1)) for token in shlex.split(rest)]  # type: ignore[misc]


def _copies(rest: str, workdir: str, context: Path) -> dict[str, str]:
    """{image path: source} of one COPY instruction (see the module docstring)."""
    parts = shlex.split(rest)
    stage = next((p.split("=", 1)[1] for p in parts if p.startswith("--from=")), "")
    paths = [p for p in parts if not p.startswith("--")]
    sources, dest = paths[:-1], paths[-1]
    target = str(PurePosixPath(workdir) / dest)          # an absolute dest replaces the WORKDIR
    into_folder = len(sources) > 1 or dest.endswith("/")
    out = {}
    for source in sources:
        named = f"--from={stage} {source}" if stage else source
        is_folder = not stage and (context / source).is_dir()
        landing = PurePosixPath(target) / PurePosixPath(source).name if into_folder and not is_folder else target
        out[str(landing)] = named
    return out


def image_config(dockerfile: Path) -> ImageConfig:
    """Parse the final stage of ``dockerfile`` (see the module docstring)."""
    steps = instructions(dockerfile.read_text())
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    config = ImageConfig(dockerfile=dockerfile)
    env = {"PATH": BASE_PATH}
    cmd_in_stage = False
    for word, rest in steps[last_from + 1:]:
        if word == "ENV":
            for key, value in _env_pairs(rest):
                env[key] = _expand(value, env)
                config.env[key] = env[key]
        elif word == "ENTRYPOINT":
            config.entrypoint = _exec_form(rest)
            if not cmd_in_stage:             # Docker: ENTRYPOINT resets a CMD inherited from the base
                config.cmd = []
        elif word == "CMD":
            config.cmd = _exec_form(rest)
            cmd_in_stage = True
        elif word == "WORKDIR":
            config.workdir = str(PurePosixPath(config.workdir) / _expand(rest, env))
        elif word == "COPY":
            config.copies.update(_copies(rest, config.workdir, dockerfile.resolve().parent.parent))
    config.env.setdefault("PATH", BASE_PATH)
    return config
