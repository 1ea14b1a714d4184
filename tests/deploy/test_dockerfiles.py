"""Dockerfile lint, and what the images' build and health steps do, run for real here: the
VARIANT switch of the RUN step, the lock-derived installs (docker/lockdeps.py as the RUN steps
call it) and the HEALTHCHECK command (docker/healthcheck.py with the Dockerfile's arguments)."""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cdissect_common.config import SERVICE_DEFAULTS
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from deploy.rehearse.dockerfile import instructions as parse_instructions
from deploy_helpers import REPO_ROOT, docker_module

DOCKER = REPO_ROOT / "docker"
LOCK = REPO_ROOT / "requirements.lock"
IMAGES = ("embedder", "activations", "labeler", "cli")
DIGEST = re.compile(r"^[\w.\-/:]+:[\w.\-]+@sha256:[0-9a-f]{64}$")


lockdeps = docker_module("lockdeps")


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of docker/<name>.Dockerfile (the rehearsal's parser)."""
    return parse_instructions((DOCKER / f"{name}.Dockerfile").read_text())


def base_images(name: str) -> list[str]:
    """Every FROM image with ${ARG} defaults substituted (stage names are kept as they are)."""
    args, stages, images = {}, set(), []
    for word, rest in instructions(name):
        if word == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args.setdefault(key, value)
        if word == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            if image not in stages:
                images.append(image)
            if len(parts) == 3 and parts[1].upper() == "AS":
                stages.add(parts[2])
    return images


@pytest.mark.parametrize("name", IMAGES)
def test_base_images_are_pinned_by_tag_and_digest(name: str) -> None:
    images = base_images(name)
    assert images, f"{name}.Dockerfile has no FROM"
    for image in images:
        assert DIGEST.match(image), f"{name}: base image {image!r} must be name:tag@sha256:<digest>"
        assert ":latest" not in image and not image.split("@")[0].endswith(":latest")
    assert "latest" not in (DOCKER / f"{name}.Dockerfile").read_text().lower()


@pytest.mark.parametrize("name", IMAGES)
def test_multi_stage_non_root_and_installs_from_the_lock(name: str) -> None:
    steps = instructions(name)
    words = [word for word, _ in steps]
    assert words.count("FROM") >= 2 and any(w == "COPY" and r.startswith("--from=") for w, r in steps)
    final = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM"):]
    users = [rest for word, rest in final if word == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0", \
        f"{name}: the final stage must switch to a numeric non-root USER (Kubernetes runAsNonRoot checks it)"
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert any(w == "COPY" and "requirements.lock" in r for w, r in steps), name
    assert "--constraint requirements.lock" in runs and "lockdeps.py requirements requirements.lock" in runs
    assert "lockdeps.py verify requirements.lock" in runs
    assert re.search(r"pip install --no-deps \./services/common \./(services/)?" + name, runs), name
    assert not any(word == "ADD" for word in words), "use COPY; ADD fetches URLs and unpacks archives"


@pytest.mark.parametrize("name", [*SERVICE_DEFAULTS])
def test_services_have_a_grpc_healthcheck_and_a_weights_volume(name: str) -> None:
    steps = dict((w, r) for w, r in instructions(name) if w in {"HEALTHCHECK", "VOLUME", "ENV"})
    assert "/opt/cdissect/healthcheck.py" in steps["HEALTHCHECK"] and "CMD" in steps["HEALTHCHECK"]
    assert "/var/cache/cdissect" in steps["VOLUME"] and "CDISSECT_CACHE_DIR=/var/cache/cdissect" in steps["ENV"]
    text = (DOCKER / f"{name}.Dockerfile").read_text()
    assert not re.search(r"\.(pt|pth|bin|safetensors)\b", text), "weights are downloaded to the cache, not baked in"


def run_variant_switch(name: str, variant: str) -> subprocess.CompletedProcess:
    """The Dockerfile's own `case "$VARIANT"` step, run by bash; prints the pip index options."""
    run = next(r for w, r in instructions(name) if w == "RUN" and 'case "$VARIANT"' in r)
    case = run[run.index('case "$VARIANT"'):run.index("esac") + len("esac")]
    script = f'set -eu; VARIANT={shlex.quote(variant)}; {case}; printf "%s" "$index"'
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("name", [*SERVICE_DEFAULTS])
def test_variant_switch_picks_cpu_wheels_by_default_and_refuses_unknown_variants(name: str) -> None:
    assert ("ARG", "VARIANT=cpu") in instructions(name)
    cpu = run_variant_switch(name, "cpu")
    assert cpu.returncode == 0 and cpu.stdout.split()[:2] == ["--index-url", "https://download.pytorch.org/whl/cpu"]
    assert "--extra-index-url https://pypi.org/simple" in cpu.stdout         # everything else from PyPI
    cuda = run_variant_switch(name, "cuda")
    assert (cuda.returncode, cuda.stdout) == (0, "")                        # the locked (CUDA) wheels
    bad = run_variant_switch(name, "rocm")
    assert bad.returncode == 1 and "rocm" in bad.stderr and bad.stdout == ""


def test_cli_image_has_no_healthcheck_and_no_torch() -> None:
    assert ("HEALTHCHECK", "NONE") in instructions("cli")
    pins = lockdeps.requirements(LOCK, [REPO_ROOT / "services/common/pyproject.toml", REPO_ROOT / "cli/pyproject.toml"])
    assert pins and not any(pin.lower().startswith(("torch", "nvidia", "triton")) for pin in pins), pins


def test_dockerignore_keeps_out_the_venv_but_not_what_images_copy() -> None:
    patterns = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for needed in (".venv", ".git", "tests"):
        assert needed in patterns
    for name in IMAGES:
        for word, rest in instructions(name):
            if word == "COPY" and not rest.startswith("--from="):
                for source in rest.split()[:-1]:
                    hit = [p for p in patterns if fnmatch.fnmatch(source, p) or source.startswith(p.rstrip("/") + "/")]
                    assert not hit, f"{name}: COPY {source} is excluded by .dockerignore {hit}"
                    assert (REPO_ROOT / source).exists(), f"{name}: COPY source {source} does not exist"


def test_lock_requirements_pin_each_direct_dependency_at_the_lock_version() -> None:
    pins = dict(line.split("==") for line in lockdeps.requirements(
        LOCK, [REPO_ROOT / "services/common/pyproject.toml", REPO_ROOT / "services/embedder/pyproject.toml"]))
    lock = lockdeps.read_lock(LOCK)
    assert {"torch", "grpcio", "clip-anytorch", "minio"} <= set(pins)
    for name, version in pins.items():
        assert lock[lockdeps.normalize(name)][1] == version
    assert not any(name.startswith("cdissect") for name in pins)


def test_lock_requirements_refuse_a_dependency_missing_from_the_lock(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["numpy>=2", "not-in-the-lock[extra]>=1"]\n')
    with pytest.raises(lockdeps.LockError, match="not-in-the-lock is a dependency .* not pinned in"):
        lockdeps.requirements(LOCK, [pyproject])
    bad_lock = tmp_path / "bad.lock"
    bad_lock.write_text("numpy>=2\n")
    with pytest.raises(lockdeps.LockError, match="not an exact pin"):
        lockdeps.read_lock(bad_lock)


def test_lock_verify_flags_unpinned_and_drifted_packages() -> None:
    installed = {"torch": "2.14.1+cpu", "PyYAML": "6.0.4", "numpy": "1.0.0", "left-pad": "1.0",
                 "cdissect-common": "0.1.0", "pip": "24.0"}
    problems = lockdeps.verify(LOCK, installed)
    assert len(problems) == 2
    assert any("numpy 1.0.0" in p and "pins 2.4.6" in p for p in problems)
    assert any("left-pad 1.0 is installed but not pinned" in p for p in problems)


def test_lock_verify_passes_on_the_test_environment() -> None:
    """The images enforce the lock the tests run with: the test venv itself must satisfy it.

    pkg_resources is imported first (clip imports it in the services): it puts setuptools'
    vendored copies on sys.path, which must not count as installed distributions.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pkg_resources  # noqa: F401
    assert lockdeps.verify(LOCK) == []


def lockdeps_calls(name: str) -> list[list[str]]:
    """argv of each `python lockdeps.py ...` in the Dockerfile's RUN steps (files relative to /src,
    laid out there as in the repository, with lockdeps.py from docker/)."""
    runs = " ".join(r for w, r in instructions(name) if w == "RUN")
    calls = re.findall(r"python lockdeps\.py ((?:requirements|verify) [^;&|>]+)", runs)
    return [[sys.executable, str(DOCKER / "lockdeps.py"), *shlex.split(call)] for call in calls]


@pytest.mark.parametrize("name", IMAGES)
def test_the_lockdeps_steps_of_the_build_run_and_pin_from_the_lock(name: str) -> None:
    calls = lockdeps_calls(name)
    assert [c[2] for c in calls] == ["requirements", "verify"], calls
    proc = subprocess.run(calls[0], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lock = lockdeps.read_lock(LOCK)
    pins = [line.split("==") for line in proc.stdout.split()]
    assert pins and all(lock[lockdeps.normalize(n)][1] == v for n, v in pins), proc.stdout
    torch_free = name == "cli"
    assert torch_free != any(lockdeps.normalize(n) == "torch" for n, _ in pins), proc.stdout
    verify = subprocess.run(calls[1], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stderr                    # this venv is what the lock pins


@pytest.fixture
def health_server():
    """A real gRPC server with only grpc.health.v1, on a free loopback port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(None)


def run_healthcheck(argv: list[str], **env: str) -> subprocess.CompletedProcess:
    """docker/healthcheck.py run as the container runs it, with only the given CDISSECT_* settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CDISSECT_")}
    return subprocess.run([sys.executable, str(DOCKER / "healthcheck.py"), *argv], env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


def healthcheck_args(name: str) -> list[str]:
    """The arguments the Dockerfile's HEALTHCHECK CMD passes to healthcheck.py."""
    cmd = next(r for w, r in instructions(name) if w == "HEALTHCHECK").split("CMD", 1)[1]
    argv = [str(a) for a in json.loads(cmd)]
    assert argv[:2] == ["python", "/opt/cdissect/healthcheck.py"], argv
    return argv[2:]


@pytest.mark.parametrize("name", [*SERVICE_DEFAULTS])
def test_the_healthcheck_command_of_each_image_passes_only_when_its_service_serves(health_server, name: str) -> None:
    servicer, port = health_server
    args = healthcheck_args(name)
    assert run_healthcheck(args, CDISSECT_PORT=str(port)).returncode == 1        # not registered yet
    servicer.set(SERVICE_DEFAULTS[name].health_name, health_pb2.HealthCheckResponse.NOT_SERVING)
    assert run_healthcheck(args, CDISSECT_PORT=str(port)).returncode == 1
    servicer.set(SERVICE_DEFAULTS[name].health_name, health_pb2.HealthCheckResponse.SERVING)
    assert run_healthcheck(args, CDISSECT_PORT=str(port)).returncode == 0
    assert args[args.index("--port") + 1] == str(SERVICE_DEFAULTS[name].port)  # without CDISSECT_PORT


def test_healthcheck_follows_cdissect_port_and_reports_a_dead_server(health_server) -> None:
    from tests.conftest import free_port

    servicer, port = health_server
    servicer.set("cdissect.v1.Embedder", health_pb2.HealthCheckResponse.SERVING)
    args = ["--service", "cdissect.v1.Embedder", "--timeout", "2"]
    assert run_healthcheck([*args, "--port", str(port)]).returncode == 0
    assert run_healthcheck([*args, "--port", "1"], CDISSECT_PORT=str(port)).returncode == 0
    dead = run_healthcheck([*args, "--port", str(port)], CDISSECT_PORT=str(free_port()))
    assert dead.returncode == 1 and ("UNAVAILABLE" in dead.stderr or "DEADLINE_EXCEEDED" in dead.stderr), dead.stderr
    assert run_healthcheck([*args, "--port", str(port)], CDISSECT_PORT="fifty").returncode == 1
