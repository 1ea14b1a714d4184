"""The rehearsal (`make rehearse`, deploy/rehearse): the kind-cpu overlay's pods and the example CLI
Job run as local processes; and on a broken copy of the manifests it names the file and field.

The passing run is the real thing at a small size (300 shapes-world images). The break-it cases
run on a copy of deploy/ and docker/ with one thing changed; the static ones fail before any
process starts (about a second each), the others as soon as the broken process shows it.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy_helpers import K8S, REPO_ROOT

SCRAPE_CONFIG = K8S / "base" / "prometheus" / "prometheus.yml"


def rehearse(root: Path, work: Path, *args: str, timeout: float = 900) -> tuple[subprocess.CompletedProcess, dict]:
    """Run `python -m deploy.rehearse` on ``root``; (process, JSON report)."""
    report = work / "report.json"
    proc = subprocess.run([sys.executable, "-m", "deploy.rehearse", "--root", str(root), "--work", str(work / "run"),
                           "--json-report", str(report), *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout)
    return proc, json.loads(report.read_text()) if report.is_file() else {}


def broken_copy(tmp_path: Path, file: str, old: str, new: str) -> Path:
    """deploy/ and docker/ copied under tmp_path with the first ``old`` in ``file`` replaced by ``new``."""
    root = tmp_path / "repo"
    for folder in ("deploy", "docker"):
        shutil.copytree(REPO_ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__", "rehearse"))
    path = root / file
    text = path.read_text()
    assert old in text, f"{old!r} is not in {file}: update this test to the manifests"
    path.write_text(text.replace(old, new, 1))
    return root


def test_make_rehearse_runs_the_rehearsal() -> None:
    proc = subprocess.run(["make", "-n", "rehearse"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "-m deploy.rehearse --images" in proc.stdout


@pytest.mark.slow
def test_rehearsal_passes_on_the_shipped_manifests(tmp_path: Path) -> None:
    proc, report = rehearse(REPO_ROOT, tmp_path, "--images", "300")
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-3000:]
    assert report["passed"] is True and "REHEARSAL PASSED" in proc.stdout
    # Every workload ran; services with the Dockerfile's ENTRYPOINT, the bucket Job with its command.
    processes = report["processes"]
    for name in ("embedder", "activations", "labeler"):
        process = processes[f"Deployment/{name}[{name}]"]
        assert process["argv"][1:] == ["-m", f"cdissect_{name}"] and Path(process["argv"][0]).name.startswith("python")
        assert f"ENTRYPOINT of docker/{name}.Dockerfile" in process["command_from"]
    assert {"StatefulSet/minio[minio]", "Deployment/prometheus[prometheus]",
            "Job/cdissect-create-bucket[create-bucket]", "Job/cdissect-run-resnet50[cdissect]"} <= set(processes)
    # The CLI Job's labels, scored against the shapes truth like the demo.
    assert report["scores"]["final_top1"] >= 0.9 and report["scores"]["n_final"] > 0, report["scores"]
    results = json.loads((Path(report["run_dir"]) / "results.json").read_text())
    assert results["dataset"]["store_url"].startswith("s3://"), results["dataset"]
    # Prometheus on the shipped configuration: every job's targets up, every service served the Job.
    shipped_jobs = {job["job_name"] for job in yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"]}
    targets = report["prometheus"]["targets"]
    assert {t["job"] for t in targets} == shipped_jobs
    assert all(t["health"] == "up" for t in targets), targets
    assert all(report["prometheus"]["rpcs"].get(job, 0) > 0 for job in shipped_jobs if job.startswith("cdissect-"))
    # What was rewritten and what was not honoured is listed.
    assert any("CDISSECT_S3_ENDPOINT" in r and "'minio:9000' -> '127.0.0.1:" in r for r in report["rewrites"])
    assert any("CDISSECT_EMBEDDER" in r and "Service embedder port 50051" in r for r in report["rewrites"])
    assert any("SeaweedFS" in s for s in report["substitutions"])
    assert any("--model: resnet50 -> shapes_cnn" in s for s in report["substitutions"])
    for what in ("NetworkPolicy resources", "container resources", "container securityContext", "pod securityContext"):
        assert what in report["not_honoured"], sorted(report["not_honoured"])
    assert "NOT honoured" in proc.stdout


STATIC_BREAKS = {
    "wrong Secret key": (
        "deploy/k8s/base/embedder.yaml", "key: access-key", "key: access_key",
        ["deploy/k8s/base/embedder.yaml: Deployment/embedder",
         "containers[embedder].env[CDISSECT_S3_ACCESS_KEY].valueFrom.secretKeyRef.key",
         "Secret cdissect-s3 has no key 'access_key'", "deploy/kind/up.sh"]),
    "missing ConfigMap key": (
        "deploy/k8s/base/labeler.yaml", "          env:\n",
        "          env:\n            - name: CDISSECT_DEVICE\n              valueFrom:\n"
        "                configMapKeyRef:\n                  name: cdissect-config\n                  key: device\n",
        ["deploy/k8s/base/labeler.yaml: Deployment/labeler",
         "containers[labeler].env[CDISSECT_DEVICE].valueFrom.configMapKeyRef.key",
         "ConfigMap cdissect-config has no key 'device'"]),
    "CLI Job addresses a port the Service lacks": (
        "deploy/k8s/examples/cli-run-job.yaml", "value: labeler:50053", "value: labeler:50052",
        ["deploy/k8s/examples/cli-run-job.yaml: Job/cdissect-run-resnet50",
         "containers[cdissect].env[CDISSECT_LABELER]", "Service labeler has no port 50052"]),
    "Prometheus scrapes a port no pod has": (
        "deploy/k8s/base/prometheus/prometheus.yml", "port: 9102", "port: 9112",
        ["deploy/k8s/base/prometheus/prometheus.yml: ConfigMap/prometheus-config",
         "scrape job cdissect-activations: port 9112", "declares no such containerPort"]),
    "Service targets a port name no container has": (
        "deploy/k8s/base/minio.yaml", "targetPort: s3", "targetPort: s3-api",
        ["deploy/k8s/base/minio.yaml: Service/minio spec.ports[s3].targetPort", "no containerPort named 's3-api'"]),
}


def named_break(tmp_path: Path, file: str, old: str, new: str, expected: list[str], timeout: float) -> str:
    """Rehearse a broken copy: it must fail, and its failure must contain every expected text; its output."""
    proc, report = rehearse(broken_copy(tmp_path, file, old, new), tmp_path, "--images", "20", timeout=timeout)
    assert proc.returncode == 1, proc.stdout[-4000:]
    for text in expected:
        assert text in report["failure"], f"{text!r} not in:\n{report['failure']}"
    return proc.stdout


@pytest.mark.parametrize("case", STATIC_BREAKS)
def test_a_static_break_is_named_before_anything_starts(case: str, tmp_path: Path) -> None:
    out = named_break(tmp_path, *STATIC_BREAKS[case], timeout=120)
    assert "started" not in out, "a static problem must stop the rehearsal before any process starts"


RUNTIME_BREAKS = {
    "wrong probe port": (
        "deploy/k8s/base/labeler.yaml", "port: 50053", "port: 50054",
        ["deploy/k8s/base/labeler.yaml: Deployment/labeler",
         "containers[labeler].startupProbe.grpc.port = 50054: nothing listens on that port",
         "the process listens on 50053 (grpc), 9103 (metrics)"]),
    "missing env var": (
        "deploy/k8s/base/config.yaml", '  CDISSECT_S3_ENDPOINT: "minio:9000"\n', "",
        ["deploy/k8s/base/bucket-job.yaml: Job/cdissect-create-bucket", "exited with code 2",
         "CDISSECT_S3_ENDPOINT is not set for Job/cdissect-create-bucket",
         "deploy/k8s/base/config.yaml: ConfigMap/cdissect-config data"]),
    "wrong grpc health service name": (
        "deploy/k8s/base/embedder.yaml", "service: cdissect.v1.Embedder", "service: cdissect.v1.Embeder",
        ["deploy/k8s/base/embedder.yaml: Deployment/embedder",
         "containers[embedder].startupProbe.grpc.service = 'cdissect.v1.Embeder'", "knows no service of that name"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", RUNTIME_BREAKS)
def test_a_runtime_break_is_named_with_its_file_and_field(case: str, tmp_path: Path) -> None:
    out = named_break(tmp_path, *RUNTIME_BREAKS[case], timeout=300)
    assert "started Job/cdissect-run-resnet50" not in out, "the rehearsal must stop before the CLI Job"

def test_image_config_reads_the_final_stage_as_docker_runs_it(tmp_path: Path) -> None:
    from deploy.rehearse.dockerfile import BASE_PATH, image_config

    cli = image_config(REPO_ROOT / "docker" / "cli.Dockerfile")
    assert (cli.entrypoint, cli.cmd, cli.workdir) == (["cdissect"], ["--help"], "/home/cdissect")
    assert cli.env["PATH"] == f"/opt/venv/bin:{BASE_PATH}" and cli.copies["/opt/venv"] == "--from=build /opt/venv"
    dockerfile = tmp_path / "x.Dockerfile"
    dockerfile.write_text('FROM a AS build\nENV A=1\nENTRYPOINT ["no"]\nFROM b\nCMD ["--flag"]\n'
                          'ENTRYPOINT ["tool", "run"]\nENV B=x \\\n    C=$B/y\nCMD echo shell form\n')
    image = image_config(dockerfile)
    assert image.entrypoint == ["tool", "run"] and image.cmd == ["/bin/sh", "-c", "echo shell form"]
    assert image.env == {"B": "x", "C": "x/y", "PATH": BASE_PATH}


def test_image_config_copies_several_sources_and_relative_destinations_as_docker_does(tmp_path: Path) -> None:
    from deploy.rehearse.dockerfile import image_config

    (tmp_path / "docker").mkdir()
    (tmp_path / "conf").mkdir()
    for name in ("a.txt", "b.txt", "conf/c.yaml"):
        (tmp_path / name).write_text(name)
    dockerfile = tmp_path / "docker" / "x.Dockerfile"
    dockerfile.write_text("FROM b\nWORKDIR /app\nCOPY a.txt b.txt etc/\nCOPY conf ./conf\nCOPY a.txt /opt/one.txt\n"
                          "COPY conf /srv/\nCOPY --from=build /opt/venv /opt/venv\n")
    copies = image_config(dockerfile).copies
    assert copies == {"/app/etc/a.txt": "a.txt", "/app/etc/b.txt": "b.txt", "/app/conf": "conf",
                      "/opt/one.txt": "a.txt", "/srv": "conf", "/opt/venv": "--from=build /opt/venv"}


def test_the_plan_lists_what_only_a_cluster_proves(tmp_path: Path) -> None:
    """The ledger names the images' contents (this venv stands in), the single replica of every
    Deployment, and the overlays not rehearsed (the GPU overlay), as README's Deployment says."""
    from deploy.rehearse.ledger import Ledger
    from deploy.rehearse.manifests import Manifests
    from deploy.rehearse.pods import Planner
    from deploy.rehearse.rehearsal import EXAMPLE_JOBS

    ledger = Ledger()
    Planner(Manifests(REPO_ROOT, "kind-cpu", EXAMPLE_JOBS), tmp_path, ledger, EXAMPLE_JOBS).plan()
    unhonoured = ledger.as_dict()["not_honoured"]
    images = next(places for what, places in unhonoured.items() if what.startswith("that the images build"))
    assert {f"docker/{name}.Dockerfile" for name in ("embedder", "activations", "labeler", "cli")} <= set(images)
    replicas = next(places for what, places in unhonoured.items() if what.startswith("replicas: one replica"))
    for name in ("embedder", "activations", "labeler", "prometheus"):
        assert any(f"Deployment/{name} spec.replicas = " in place for place in replicas), replicas
    overlays = next(places for what, places in unhonoured.items() if "GPU overlay" in what)
    assert overlays == ["deploy/k8s/overlays/gpu"]
    assert "NOT honoured" in "\n".join(ledger.lines())


def test_a_readiness_success_threshold_above_one_is_listed_as_not_honoured(tmp_path: Path) -> None:
    from deploy.rehearse.ledger import Ledger
    from deploy.rehearse.manifests import Manifests
    from deploy.rehearse.pods import Planner

    before = "            failureThreshold: 3\n          livenessProbe:"
    after = "            failureThreshold: 3\n            successThreshold: 2\n          livenessProbe:"
    root = broken_copy(tmp_path, "deploy/k8s/base/labeler.yaml", before, after)
    ledger = Ledger()
    Planner(Manifests(root, "kind-cpu"), tmp_path / "work", ledger).plan()
    places = ledger.as_dict()["not_honoured"]["probe successThreshold > 1 (here one success counts)"]
    assert places == ["deploy/k8s/base/labeler.yaml: Deployment/labeler "
                      "spec.template.spec.containers[labeler].readinessProbe.successThreshold"]


def test_wait_serving_returns_on_serving_and_fails_at_once_when_the_process_exits() -> None:
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2_grpc

    from deploy.rehearse.loopback import free_port, wait_serving

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        wait_serving(alive, port, "", timeout=10)                     # the whole server is SERVING
        with pytest.raises(TimeoutError, match="x not SERVING after 0.5s"):
            wait_serving(alive, free_port(), "", timeout=0.5, name="x")
    finally:
        alive.kill()
        server.stop(None)
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dead.wait()
    with pytest.raises(RuntimeError, match=r"(?s)the embedder exited with 3:\nboom"):
        wait_serving(dead, free_port(), "", timeout=30, name="the embedder", log=lambda: "boom")
