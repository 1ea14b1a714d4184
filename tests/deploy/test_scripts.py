"""The shell scripts: syntax and shellcheck of every one (deploy/kind, bench, scripts); for
deploy/kind early failures and the whole `make up` flow run against recording stand-ins for
docker, kind and kubectl (no daemon exists on CI machines); bench/gpu_check.sh's time budget and
summary run against stand-ins for its steps."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from deploy_helpers import REPO_ROOT, tool

KIND_DIR = REPO_ROOT / "deploy" / "kind"
KIND_SCRIPTS = sorted(KIND_DIR.glob("*.sh"))
SCRIPTS = KIND_SCRIPTS + sorted((REPO_ROOT / "bench").glob("*.sh")) + sorted((REPO_ROOT / "scripts").glob("*.sh"))
GPU_CHECK = REPO_ROOT / "bench" / "gpu_check.sh"
BASH = shutil.which("bash")


def test_scripts_parse_and_pass_shellcheck() -> None:
    assert {p.name for p in KIND_SCRIPTS} >= {"up.sh", "down.sh", "port-forward.sh", "common.sh"}
    assert {p.name for p in SCRIPTS} >= {"gpu_check.sh", "device_wheels.sh", "install_system_packages.sh"}
    for script in SCRIPTS:
        proc = subprocess.run([BASH, "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script.name}: {proc.stderr}"
    proc = subprocess.run([tool("shellcheck"), "-x", *[str(s) for s in SCRIPTS]], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_kind_config_pins_the_node_image() -> None:
    config = yaml.safe_load((KIND_DIR / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    for node in config["nodes"]:
        assert node["image"].startswith("kindest/node:v1.") and "@sha256:" in node["image"]


def fake_bin(tmp_path: Path, **programs: str) -> Path:
    """A bin folder with the basic tools the scripts use plus the given stand-in programs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("dirname", "head", "od", "tr", "grep", "base64", "cat", "sh"):
        os.symlink(shutil.which(name), bin_dir / name)
    for name, body in programs.items():
        path = bin_dir / name
        path.write_text(f"#!{BASH}\necho \"{name} $*\" >> \"$CALLS\"\n{body}\n")
        path.chmod(0o755)
    return bin_dir


def run_script(name: str, bin_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {"PATH": str(bin_dir), "CALLS": str(tmp_path / "calls.log"), "HOME": str(tmp_path)}
    return subprocess.run([BASH, str(KIND_DIR / name)], capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("script", ["up.sh", "down.sh"])
def test_missing_docker_fails_early_and_says_so(script: str, tmp_path: Path) -> None:
    proc = run_script(script, fake_bin(tmp_path), tmp_path)
    assert proc.returncode == 1 and "docker is not installed" in proc.stderr
    assert "CI machines" in proc.stderr


def test_stopped_docker_daemon_fails_early(tmp_path: Path) -> None:
    proc = run_script("up.sh", fake_bin(tmp_path, docker='[ "$1" = info ] && exit 1; exit 0', kind="exit 0"),
                      tmp_path)
    assert proc.returncode == 1 and "Docker daemon is not running" in proc.stderr
    assert "kind" not in (tmp_path / "calls.log").read_text()


def test_the_real_docker_client_without_a_daemon_fails_early(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client on this machine")
    bin_dir = fake_bin(tmp_path)
    os.symlink(docker, bin_dir / "docker")
    probe = subprocess.run([docker, "info"], capture_output=True, timeout=30)
    if probe.returncode == 0:
        pytest.skip("a Docker daemon is running here")
    proc = run_script("up.sh", bin_dir, tmp_path)
    assert proc.returncode == 1 and "Docker daemon is not running" in proc.stderr


@pytest.mark.parametrize("script", ["up.sh", "down.sh"])
def test_missing_kind_fails_early(script: str, tmp_path: Path) -> None:
    proc = run_script(script, fake_bin(tmp_path, docker="exit 0"), tmp_path)
    assert proc.returncode == 1 and "kind is not installed" in proc.stderr


def test_up_runs_build_load_secrets_apply_and_waits_in_order(tmp_path: Path) -> None:
    kubectl = '''case "$*" in
  *"get secret cdissect-auth -o"*) printf '%s' "$(printf tok | base64)";;
  *"get secret cdissect-s3 -o jsonpath={.data.access-key}"*) printf '%s' "$(printf ak | base64)";;
  *"get secret cdissect-s3 -o"*) printf '%s' "$(printf sk | base64)";;
  *"get secret"*) exit 1;;
esac
exit 0'''
    bin_dir = fake_bin(tmp_path, docker="exit 0", kind="exit 0", kubectl=kubectl)
    proc = run_script("up.sh", bin_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "calls.log").read_text().splitlines()

    def index(fragment: str) -> int:
        hits = [i for i, call in enumerate(calls) if fragment in call]
        assert hits, f"no call containing {fragment!r} in:\n" + "\n".join(calls)
        return hits[0]

    created = index("kind create cluster --name cdissect --config")
    for image in ("embedder", "activations", "labeler", "cli"):
        build = index(f"docker/{image}.Dockerfile --tag cdissect/{image}:0.1.0")
        load = index(f"kind load docker-image --name cdissect cdissect/{image}:0.1.0")
        assert created < build < load
    auth = index("create secret generic cdissect-auth --from-literal=token=")
    s3 = index("create secret generic cdissect-s3 --from-literal=access-key=cdissect --from-literal=secret-key=")
    apply = index("apply -k " + str(REPO_ROOT / "deploy/k8s/overlays/kind-cpu"))
    assert max(auth, s3) < apply < index("rollout status statefulset/minio")
    assert apply < index("wait --for=condition=complete job/cdissect-create-bucket")
    assert apply < index("rollout status deployment/embedder")
    assert all("--context kind-cdissect" in call for call in calls if call.startswith("kubectl"))
    assert "CDISSECT_AUTH_TOKEN=tok" in proc.stdout and "CDISSECT_S3_SECRET_KEY=sk" in proc.stdout
    assert "port-forward.sh" in proc.stdout and "localhost:9090" in proc.stdout
    assert not any("rollout restart" in call for call in calls), "a new cluster needs no restart"


def test_down_deletes_only_an_existing_cluster(tmp_path: Path) -> None:
    bin_dir = fake_bin(tmp_path, docker="exit 0", kind='[ "$1 $2" = "get clusters" ] && echo other; exit 0')
    proc = run_script("down.sh", bin_dir, tmp_path)
    assert proc.returncode == 0 and "nothing to delete" in proc.stdout
    assert "delete" not in (tmp_path / "calls.log").read_text()


def test_every_phony_make_target_has_a_rule_and_is_in_help() -> None:
    """A name in .PHONY without a rule makes `make NAME` a silent no-op ("Nothing to be done")."""
    text = (REPO_ROOT / "Makefile").read_text().replace("\\\n", " ")
    phony = set(re.search(r"^\.PHONY:(.*)$", text, re.MULTILINE).group(1).split())
    rules = set(re.findall(r"^([\w-]+):(?!=)", text, re.MULTILINE))
    assert phony - rules == set(), f"Makefile: .PHONY names targets with no rule: {sorted(phony - rules)}"
    help_text = re.search(r"^help:\n((?:\t.*\n)+)", text, re.MULTILINE).group(1)
    listed = set(re.findall(r"[\w-]+", help_text))
    assert phony - {"help"} - listed == set(), f"`make help` does not list {sorted(phony - {'help'} - listed)}"


def fake_gpu_check_repo(tmp_path: Path, steps: dict[str, str]) -> Path:
    """A copy of bench/gpu_check.sh in a folder with a .venv/bin/python and a `make` whose steps
    (cuda_tests, bench_pipeline, bench_labeler, bench_run) run the given shell snippets; the
    script's `python -` calls (environment, summary) reach the real interpreter."""
    root = tmp_path / "repo"
    (root / "bench").mkdir(parents=True)
    shutil.copy(GPU_CHECK, root / "bench" / "gpu_check.sh")
    venv_bin = root / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    python = venv_bin / "python"
    python.write_text(f"""#!{BASH}
case "$1 $2" in
  "-m pytest") {steps.get("cuda_tests", "echo '1 passed'")};;
  "bench/bench_run.py --json") {steps.get("bench_run", "echo '{{}}'")};;
  "- ") echo "environment (stand-in)";;
  *) exec {sys.executable} "$@";;
esac
""")
    make = tmp_path / "bin" / "make"
    make.parent.mkdir()
    make.write_text(f"""#!{BASH}
case "$2" in
  bench-pipeline) {steps.get("bench_pipeline", "echo '{{}}'")};;
  bench-labeler) {steps.get("bench_labeler", "echo '{{}}'")};;
esac
""")
    for path in (python, make):
        path.chmod(0o755)
    return root


def test_gpu_check_stays_in_its_budget_and_reads_the_figures_of_a_failed_step(tmp_path: Path) -> None:
    """A step that would run past the budget is cut at the time left less the summary's reserve,
    the steps after it are skipped, and a step that printed its JSON before make's error line
    still has its figures in the summary."""
    figures = {"embedder": {"path_img_s": 2100.0, "forward_img_s": 2200.0, "vs_forward": 0.95}}
    root = fake_gpu_check_repo(tmp_path, {
        "bench_pipeline": f"echo 'timing...'; echo '{json.dumps(figures)}'; "
                          "echo 'make: *** [Makefile:46: bench-pipeline] Error 1' >&2; exit 2",
        "bench_labeler": "sleep 60",
    })
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "OUT": str(out),
           "GPU_CHECK_MODE": "cpu", "GPU_CHECK_BUDGET_S": "9", "GPU_CHECK_RESERVE_S": "3",
           "GPU_CHECK_MIN_STEP_S": "2"}
    started = time.monotonic()
    proc = subprocess.run([BASH, str(root / "bench" / "gpu_check.sh")], capture_output=True, text=True, env=env,
                          timeout=60)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert took < 9, f"the script took {took:.1f} s with a budget of 9 s:\n{proc.stdout}"
    assert re.search(r"bench_labeler \(limit [2-6] s\)", proc.stdout), proc.stdout
    assert "skipped bench_run" in proc.stdout
    summary = json.loads((out / "summary.json").read_text().strip().splitlines()[-1])
    assert summary["bench_pipeline"] == figures
    assert summary["bench_labeler"] is None and summary["bench_run"] is None
    assert summary["cuda_tests_rc"] == 0 and summary["cuda_tests"] == "1 passed"
