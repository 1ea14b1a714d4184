"""Manifests, images, scripts and docs agree with the code's one source of truth
(cdissect_common.config), checked both ways."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from cdissect_common.config import CONFIG_ENV_VAR, ENV_VARS, SERVICE_DEFAULTS, load_settings

from deploy.rehearse.manifests import secrets_from_script
from deploy_helpers import K8S, REPO_ROOT, TREES, find, one, pod_specs, rendered, rendered_text  # noqa: F401

DOCKER = REPO_ROOT / "docker"
SCRAPE_CONFIG = K8S / "base" / "prometheus" / "prometheus.yml"
KNOWN_ENV = set(ENV_VARS.values()) | {CONFIG_ENV_VAR}
ENV_NAME = re.compile(r"\bCDISSECT_[A-Z0-9_]+\b")
# Settings every service needs in a cluster: they must be set explicitly in the manifests.
CLUSTER_SETTINGS = ("host", "port", "metrics_port", "store", "s3_endpoint", "s3_access_key", "s3_secret_key",
                    "s3_secure", "auth_token_file", "cache_dir", "device", "shutdown_grace_seconds", "max_workers",
                    "max_inflight_rpcs", "max_inflight_inline", "retry_timeout", "max_loaded_models")


def service_container(docs: list[dict], name: str) -> tuple[dict, dict]:
    """(pod spec, the one container) of a service's Deployment."""
    spec = one(docs, "Deployment", name)["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return spec, container


def container_env(docs: list[dict], container: dict) -> dict[str, str]:
    """The environment a container gets: ConfigMaps from envFrom, then env (secrets as markers)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = f"<secret {ref['name']}/{ref['key']}>"
    return env


def secret_references(docs: list[dict]) -> set[tuple[str, str]]:
    """(secret name, key) of every secretKeyRef and secret volume item in a tree."""
    refs = set()
    for _name, spec in pod_specs(docs):
        for container in spec["containers"]:
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add((ref["name"], ref["key"]))
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                items = volume["secret"].get("items")
                assert items, f"secret volume {volume['name']} must list its keys (items)"
                refs.update((volume["secret"]["secretName"], item["key"]) for item in items)
    return refs


def dockerfile(name: str) -> str:
    path = DOCKER / f"{name}.Dockerfile"
    assert path.is_file(), f"no Dockerfile for image cdissect/{name}: expected {path.relative_to(REPO_ROOT)}"
    return path.read_text()


@pytest.mark.parametrize("tree", TREES)
def test_every_service_default_is_what_the_manifests_deploy(rendered: dict, tree: str) -> None:
    """code -> manifests: ports, metrics ports and health names of every service."""
    docs = rendered[tree]
    for name, defaults in SERVICE_DEFAULTS.items():
        _spec, container = service_container(docs, name)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"grpc": defaults.port, "metrics": defaults.metrics_port}, name
        env = container_env(docs, container)
        assert env[ENV_VARS["port"]] == str(defaults.port), name
        assert env[ENV_VARS["metrics_port"]] == str(defaults.metrics_port), name
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": defaults.port, "service": defaults.health_name}, \
                f"{name} {probe}"
        service_ports = {p["name"]: (p["port"], p["targetPort"]) for p in one(docs, "Service", name)["spec"]["ports"]}
        assert service_ports == {"grpc": (defaults.port, "grpc"), "metrics": (defaults.metrics_port, "metrics")}


@pytest.mark.parametrize("tree", TREES)
def test_manifests_deploy_only_services_the_code_knows(rendered: dict, tree: str) -> None:
    """manifests -> code: every gRPC Deployment, probe and Service port is a known service's."""
    docs = rendered[tree]
    known = {(d.port, d.health_name) for d in SERVICE_DEFAULTS.values()}
    deployed = set()
    for deployment in find(docs, "Deployment"):
        if deployment["metadata"]["labels"].get("app.kubernetes.io/component") != "grpc-service":
            continue
        name = deployment["metadata"]["name"]
        assert name in SERVICE_DEFAULTS, f"Deployment {name} is not a service of cdissect_common.config"
        deployed.add(name)
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                grpc_probe = container[probe]["grpc"]
                assert (grpc_probe["port"], grpc_probe["service"]) in known, f"{name} {probe}: {grpc_probe}"
    assert deployed == set(SERVICE_DEFAULTS)


def _env_names_in_files() -> dict[str, set[str]]:
    files = [*K8S.rglob("*.yaml"), *K8S.rglob("*.py"), *(REPO_ROOT / "deploy" / "kind").glob("*.sh"),
             REPO_ROOT / "deploy" / "README.md", *DOCKER.glob("*.Dockerfile"), *DOCKER.glob("*.py")]
    return {str(f.relative_to(REPO_ROOT)): set(ENV_NAME.findall(f.read_text())) for f in files}


def test_every_cdissect_variable_in_deploy_files_exists_in_the_code() -> None:
    """manifests, scripts, Dockerfiles and deploy docs -> code: no misspelt CDISSECT_* name."""
    found = _env_names_in_files()
    unknown = {path: sorted(names - KNOWN_ENV) for path, names in found.items() if names - KNOWN_ENV}
    assert not unknown, f"names not in cdissect_common.config.ENV_VARS: {unknown}"
    assert sum(len(names) for names in found.values()) > 20, "the scan found almost nothing: wrong files?"


@pytest.mark.parametrize("tree", TREES)
def test_every_cluster_setting_is_set_and_loads_through_the_real_config(rendered: dict, tree: str,
                                                                        tmp_path: Path) -> None:
    """code -> manifests: each service gets every cluster setting, and the code accepts the values."""
    docs = rendered[tree]
    empty_config = tmp_path / "config.yaml"
    empty_config.write_text("{}\n")
    minio_service = one(docs, "Service", "minio")["spec"]["ports"]
    minio_address = {f"minio:{p['port']}" for p in minio_service if p["name"] == "s3"}
    for name, defaults in SERVICE_DEFAULTS.items():
        spec, container = service_container(docs, name)
        env = container_env(docs, container)
        missing = [ENV_VARS[key] for key in CLUSTER_SETTINGS if ENV_VARS[key] not in env]
        assert not missing, f"{tree} {name} lacks {missing}"
        settings = load_settings(name, env=env, config_file=empty_config)
        assert (settings.port, settings.metrics_port) == (defaults.port, defaults.metrics_port)
        assert settings.health_name == defaults.health_name
        assert settings.store.startswith("s3://") and {settings.s3_endpoint} == minio_address
        assert settings.s3_access_key == "<secret cdissect-s3/access-key>"
        assert settings.s3_secret_key == "<secret cdissect-s3/secret-key>"
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        token_dir, token_file = settings.auth_token_file.rsplit("/", 1)
        auth = volumes[mounts[token_dir]]["secret"]
        assert auth["secretName"] == "cdissect-auth" and {"key": "token", "path": token_file} in auth["items"]
        assert settings.cache_dir in mounts, f"{name}: CDISSECT_CACHE_DIR {settings.cache_dir} is not a volume"
        assert settings.shutdown_grace_seconds < spec["terminationGracePeriodSeconds"], \
            f"{name}: pods are killed before the shutdown grace period ends"
        gpu = tree == "overlays/gpu" and name in {"embedder", "activations"}
        assert settings.device == ("cuda" if gpu else "cpu"), f"{tree} {name}"


def test_bucket_job_creates_the_bucket_of_the_store(rendered: dict) -> None:
    docs = rendered["base"]
    (container,) = one(docs, "Job", "cdissect-create-bucket")["spec"]["template"]["spec"]["containers"]
    env = container_env(docs, container)
    services_env = container_env(docs, service_container(docs, "labeler")[1])
    for key in ("store", "s3_endpoint", "s3_access_key", "s3_secret_key", "s3_secure"):
        assert env[ENV_VARS[key]] == services_env[ENV_VARS[key]], key
    spec = one(docs, "Job", "cdissect-create-bucket")["spec"]["template"]["spec"]
    script_dir, script_name = container["command"][-1].rsplit("/", 1)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == script_dir]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    script = one(docs, "ConfigMap", volume["configMap"]["name"])["data"][script_name]
    assert script == (K8S / "base" / "create_bucket.py").read_text()
    compile(script, "create_bucket.py", "exec")


def _secrets_created_by_up_sh() -> set[tuple[str, str]]:
    text = (REPO_ROOT / "deploy" / "kind" / "up.sh").read_text()
    return {(name, key) for name, keys in secrets_from_script(text).items() for key in keys}


@pytest.mark.parametrize("tree", TREES)
def test_secret_keys_match_the_secrets_make_up_creates(rendered: dict, tree: str) -> None:
    """Both ways: every referenced (secret, key) is created by up.sh and every created one is used."""
    created = _secrets_created_by_up_sh()
    assert created == secret_references(rendered[tree])
    readme = (REPO_ROOT / "deploy" / "README.md").read_text()
    for secret, key in created:
        assert f"generic {secret}" in readme and f"--from-literal={key}=" in readme, (secret, key)


def test_minio_and_the_services_use_the_same_credentials(rendered: dict) -> None:
    docs = rendered["base"]
    (minio,) = one(docs, "StatefulSet", "minio")["spec"]["template"]["spec"]["containers"]
    minio_env = container_env(docs, minio)
    for name in SERVICE_DEFAULTS:
        env = container_env(docs, service_container(docs, name)[1])
        assert env[ENV_VARS["s3_access_key"]] == minio_env["MINIO_ROOT_USER"]
        assert env[ENV_VARS["s3_secret_key"]] == minio_env["MINIO_ROOT_PASSWORD"]


def test_scrape_config_reads_every_service_metrics_port(rendered: dict) -> None:
    """Both ways: one job per service on its headless Service and metrics port, nothing else."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"] if "dns_sd_configs" in job}
    assert set(jobs) == {f"cdissect-{name}" for name in SERVICE_DEFAULTS}
    docs = rendered["base"]
    for name, defaults in SERVICE_DEFAULTS.items():
        job = jobs[f"cdissect-{name}"]
        assert job["metrics_path"] == "/metrics"
        (sd,) = job["dns_sd_configs"]
        assert sd == {"names": [name], "type": "A", "port": defaults.metrics_port}
        assert one(docs, "Service", name)["spec"]["clusterIP"] == "None", "DNS A records need a headless Service"
    mounted = find(docs, "ConfigMap")
    deployed = [cm["data"]["prometheus.yml"] for cm in mounted if "prometheus.yml" in cm.get("data", {})]
    assert deployed == [SCRAPE_CONFIG.read_text()], "Prometheus must mount exactly prometheus/prometheus.yml"


def test_every_image_has_a_dockerfile_and_every_dockerfile_is_deployed(rendered: dict) -> None:
    used: set[str] = set()
    for tree in TREES:
        for _name, spec in pod_specs(rendered[tree]):
            for container in spec["containers"]:
                image = container["image"]
                if not image.startswith("cdissect/"):
                    assert "@sha256:" in image, f"third-party image {image} must be pinned by digest"
                    continue
                name, tag = image.removeprefix("cdissect/").split(":")
                text = dockerfile(name)
                if tag.endswith("-cuda"):
                    assert re.search(r"^ARG VARIANT=cpu$", text, re.M) and "cuda)" in text, \
                        f"{image} needs a CUDA variant in docker/{name}.Dockerfile"
                used.add(name)
    assert used == {p.name.removesuffix(".Dockerfile") for p in DOCKER.glob("*.Dockerfile")}
    for name, defaults in SERVICE_DEFAULTS.items():
        text = dockerfile(name)
        assert f'ENTRYPOINT ["python", "-m", "{defaults.module}"]' in text
        assert f'"--service", "{defaults.health_name}", "--port", "{defaults.port}"' in text
        assert re.search(rf"^EXPOSE {defaults.port} {defaults.metrics_port}$", text, re.M), name


def test_example_cli_job_points_at_the_services_with_known_settings(rendered: dict, tmp_path: Path) -> None:
    docs = [d for d in yaml.safe_load_all((K8S / "examples" / "cli-run-job.yaml").read_text()) if d]
    (job,) = find(docs, "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = container_env(rendered["base"], container)
    assert secret_references(docs) <= _secrets_created_by_up_sh()
    config = tmp_path / "config.yaml"
    config.write_text("{}\n")
    settings = load_settings(None, env=env, config_file=config)
    for name, defaults in SERVICE_DEFAULTS.items():
        (endpoint,) = settings.endpoints(name)
        assert endpoint == f"{name}:{defaults.port}", name
        one(rendered["base"], "Service", name)
    assert settings.store.startswith("s3://") and settings.auth_token_file.endswith("/token")
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    for path in (settings.runs_dir, settings.data_dir, settings.cache_dir):
        assert any(path == m or path.startswith(m + "/") for m in mounts), f"{path} is not on a volume"
