"""The kustomize trees render, pass the Kubernetes schemas, and meet the deployment rules."""
from __future__ import annotations

import subprocess

import pytest
import yaml

from deploy_helpers import K8S, OVERLAYS, TREES, find, one, pod_specs, rendered, rendered_text, tool  # noqa: F401

SERVICES = ("embedder", "activations", "labeler")
EXAMPLE = K8S / "examples" / "cli-run-job.yaml"


@pytest.mark.parametrize("version", ["1.30", "1.37"])
@pytest.mark.parametrize("tree", TREES)
def test_tree_validates_strictly(rendered_text: dict[str, str], tree: str, version: str) -> None:
    proc = subprocess.run([tool("kubernetes-validate"), "--strict", "--kubernetes-version", version, "-"],
                          input=rendered_text[tree], capture_output=True, text=True, timeout=120)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if "passed" not in line]
    assert proc.returncode == 0 and not problems, f"{tree} against Kubernetes {version}:\n" + "\n".join(problems)
    assert proc.stdout.count("passed") >= 15, "kubernetes-validate checked fewer resources than rendered"


def test_validator_rejects_an_unknown_field(rendered_text: dict[str, str]) -> None:
    """The strict check above is real: a misspelt field fails it."""
    broken = rendered_text["base"].replace("readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true", 1)
    proc = subprocess.run([tool("kubernetes-validate"), "--strict", "-k", "1.37", "-"], input=broken,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "readOnlyRootFileSystem" in proc.stdout + proc.stderr


@pytest.mark.parametrize("tree", TREES)
def test_every_resource_is_namespaced_to_cdissect(rendered: dict, tree: str) -> None:
    for doc in rendered[tree]:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "cdissect", f"{doc['kind']}/{doc['metadata']['name']}"


@pytest.mark.parametrize("tree", TREES)
def test_pods_are_locked_down_with_requests_and_limits(rendered: dict, tree: str) -> None:
    specs = pod_specs(rendered[tree])
    assert len(specs) == 6, [name for name, _ in specs]
    for name, spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, name
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][part]), f"{name} {part}"
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]], f"{name} needs an emptyDir /tmp"
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{name}: unpinned {image}"


@pytest.mark.parametrize("tree", TREES)
def test_services_are_headless_and_probed_over_grpc(rendered: dict, tree: str) -> None:
    docs = rendered[tree]
    for service in SERVICES:
        assert one(docs, "Service", service)["spec"]["clusterIP"] == "None"
        spec = one(docs, "Deployment", service)["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert set(container[probe]) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, probe
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "startupProbe must allow weight loading"
        cache = [m for m in container["volumeMounts"] if m["mountPath"] == "/var/cache/cdissect"]
        assert cache, f"{service} has no weights cache volume"


@pytest.mark.parametrize("tree", TREES)
def test_network_policies_gate_services_minio_and_metrics(rendered: dict, tree: str) -> None:
    docs = rendered[tree]
    policies = {p["metadata"]["name"]: p["spec"] for p in find(docs, "NetworkPolicy")}
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}

    def allowed(pod_labels: dict, port: str, from_labels: dict) -> bool:
        for spec in policies.values():
            selector = spec["podSelector"].get("matchLabels", {})
            if not selector.items() <= pod_labels.items():
                continue
            for rule in spec.get("ingress", []):
                ports = {p["port"] for p in rule.get("ports", [])}
                peers = [peer.get("podSelector", {}).get("matchLabels", {}) for peer in rule.get("from", [])]
                if port in ports and any(peer.items() <= from_labels.items() for peer in peers):
                    return True
        return False

    cli = {"cdissect.io/client": "true", "cdissect.io/minio-client": "true"}
    prometheus = one(docs, "Deployment", "prometheus")["spec"]["template"]["metadata"]["labels"]
    minio = one(docs, "StatefulSet", "minio")["spec"]["template"]["metadata"]["labels"]
    job = one(docs, "Job", "cdissect-create-bucket")["spec"]["template"]["metadata"]["labels"]
    for service in SERVICES:
        labels = one(docs, "Deployment", service)["spec"]["template"]["metadata"]["labels"]
        assert allowed(labels, "grpc", cli) and not allowed(labels, "grpc", prometheus), service
        assert allowed(labels, "metrics", prometheus) and not allowed(labels, "metrics", cli), service
        assert allowed(minio, "s3", labels), f"{service} cannot reach MinIO"
    assert allowed(minio, "s3", job) and allowed(minio, "s3", cli)
    assert not allowed(minio, "s3", prometheus), "only MinIO clients may reach MinIO"


def test_kind_overlay_is_small_and_never_pulls_our_images(rendered: dict) -> None:
    docs = rendered["overlays/kind-cpu"]
    for name, spec in pod_specs(docs):
        for container in spec["containers"]:
            if container["image"].startswith("cdissect/"):
                assert container["image"].endswith(":0.1.0"), name
                assert container["imagePullPolicy"] == "Never", f"{name}: kind images are loaded, not pulled"
            assert "nvidia.com/gpu" not in container["resources"]["limits"], name
    for service in SERVICES:
        (container,) = one(docs, "Deployment", service)["spec"]["template"]["spec"]["containers"]
        assert container["resources"]["requests"]["cpu"] in {"100m", "250m"}, service


def test_gpu_overlay_puts_embedder_and_activations_on_gpus(rendered: dict) -> None:
    docs = rendered["overlays/gpu"]
    for service in ("embedder", "activations"):
        spec = one(docs, "Deployment", service)["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert container["image"] == f"cdissect/{service}:0.1.0-cuda"
        assert {"name": "CDISSECT_DEVICE", "value": "cuda"} in container["env"]
        assert spec["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    (labeler,) = one(docs, "Deployment", "labeler")["spec"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in labeler["resources"]["limits"] and labeler["image"].endswith(":0.1.0")


def test_overlays_keep_every_base_resource(rendered: dict) -> None:
    names = {(d["kind"], d["metadata"]["name"]) for d in rendered["base"]}
    for overlay in OVERLAYS:
        assert {(d["kind"], d["metadata"]["name"]) for d in rendered[f"overlays/{overlay}"]} == names, overlay


def test_example_cli_job_validates_and_is_admitted_by_the_policies(rendered: dict) -> None:
    text = EXAMPLE.read_text()
    for version in ("1.30", "1.37"):
        proc = subprocess.run([tool("kubernetes-validate"), "--strict", "-k", version, "-"], input=text,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    docs = [d for d in yaml.safe_load_all(text) if d]
    (job,) = find(docs, "Job")
    labels = job["spec"]["template"]["metadata"]["labels"]
    policies = {p["metadata"]["name"]: p["spec"] for p in find(rendered["base"], "NetworkPolicy")}
    for policy in ("grpc-from-clients", "minio-from-clients"):
        (peer,) = policies[policy]["ingress"][0]["from"]
        assert peer["podSelector"]["matchLabels"].items() <= labels.items(), policy
    spec = job["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    (container,) = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["image"] in {c["image"] for _n, s in pod_specs(rendered["base"]) for c in s["containers"]}
