"""The bucket Job's script (deploy/k8s/base/create_bucket.py) against a real S3 server
(the shared `seaweedfs` fixture of tests/conftest.py), with the Job's own settings from the manifests."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from deploy_helpers import K8S, one, rendered, rendered_text  # noqa: F401

SCRIPT = K8S / "base" / "create_bucket.py"


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


@pytest.mark.slow
def test_script_creates_the_bucket_once_and_rejects_wrong_keys(rendered: dict, seaweedfs) -> None:
    from minio import Minio

    client = Minio(seaweedfs.endpoint, access_key=seaweedfs.access_key, secret_key=seaweedfs.secret_key,
                   secure=False)
    env = {**job_env(rendered["base"]), "CDISSECT_S3_ENDPOINT": seaweedfs.endpoint,
           "CDISSECT_S3_ACCESS_KEY": seaweedfs.access_key, "CDISSECT_S3_SECRET_KEY": seaweedfs.secret_key,
           "CREATE_BUCKET_ATTEMPTS": "1"}
    bucket = env["CDISSECT_STORE"].removeprefix("s3://")
    assert bucket != seaweedfs.bucket, "the shared server's own test bucket must not be the Job's"
    assert not client.bucket_exists(bucket)
    first = run_script(env)
    assert first.returncode == 0 and f"created bucket {bucket}" in first.stdout, first.stderr
    assert client.bucket_exists(bucket)
    again = run_script(env)
    assert again.returncode == 0 and "already exists" in again.stdout
    wrong = run_script({**env, "CDISSECT_S3_SECRET_KEY": "not-the-secret"})
    assert wrong.returncode == 1 and "gave up creating bucket" in wrong.stderr
