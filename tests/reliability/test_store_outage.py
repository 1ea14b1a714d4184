"""An S3 outage that outlasts the retry budget is reported once, on time, naming the store.

`cdissect run` with its local services on the real SeaweedFS; the S3 server is stopped once the
first shard artifact is stored and stays down. The run must fail once the budget it was given is
spent (plus the seconds it takes to stop its services), with one message naming the store, not
the service. (Before: each service retried the store for its own 90 s, then answered UNAVAILABLE,
which the CLI retried as a service failure, blaming the service.)"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from minio import Minio

from tests.integration.test_cli_support import (assert_no_torch, make_env, run_args, start_cli, stop_process,
                                                wait_for, write_probe, write_words)

pytestmark = pytest.mark.slow
BUDGET = 15.0


def _keys(server, prefix: str) -> list[str]:
    client = Minio(server.endpoint, access_key=server.access_key, secret_key=server.secret_key, secure=False)
    return [o.object_name for o in client.list_objects(server.bucket, prefix=prefix, recursive=True)]


def test_an_s3_outage_is_reported_once_within_the_budget_naming_the_store(
        seaweedfs, tiny_clip_checkpoint: Path, tmp_path: Path) -> None:
    prefix = "outage-report"
    store_url = f"{seaweedfs.store_url}/{prefix}"
    env = make_env(tmp_path, **{**seaweedfs.env(), "CDISSECT_STORE": store_url})
    probe, words = write_probe(tmp_path / "probe", 24, seed=5), write_words(tmp_path / "words.txt")
    cli = start_cli(run_args(probe, words, tiny_clip_checkpoint, "--retry-timeout", f"{BUDGET:g}",
                             layers="layer4", shard_size=2), env)
    try:
        wait_for(lambda: _keys(seaweedfs, f"{prefix}/activations/") or _keys(seaweedfs, f"{prefix}/embeddings/image/"),
                 300, "the first shard artifact in S3")
        seaweedfs.stop()
        outage = time.monotonic()
        try:
            out, err = cli.communicate(timeout=3 * BUDGET)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run was still going {3 * BUDGET:.0f}s into the outage (retry budget {BUDGET:g}s)")
        took = time.monotonic() - outage
    finally:
        stop_process(cli)
        seaweedfs.start()
    assert_no_torch(env)
    assert cli.returncode == 1, (cli.returncode, err[-3000:])
    # The budget, then the seconds it takes to stop the local services: well short of twice the budget.
    assert took < 2 * BUDGET, f"reported {took:.1f}s into the outage (budget {BUDGET:g}s)"
    text = " ".join(err.split())
    assert text.count("did not answer") == 1, err[-3000:]
    assert f"the object store {store_url}" in text and seaweedfs.endpoint in text, err[-3000:]
    assert "is the service running" not in text and "Traceback" not in err, err[-3000:]
