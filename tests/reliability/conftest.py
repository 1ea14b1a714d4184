"""Shared services for the reliability tests: real service processes on loopback, shared by runs.

``shared_services(store)`` (session) starts embedder, activations and labeler on a store with
bearer auth, and gives the CLI environment that points a run at them: the situation of several
users (or projects) on one cluster. ``fs_shared`` uses a filesystem store; ``s3_shared`` the
session's SeaweedFS (tests/conftest.py). The helpers come from the integration tests.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.test_cli_support import integration_conftest, make_env

TOKEN = "reliability-token"


@dataclass
class SharedServices:
    """Three service processes on one store, and what a CLI run needs to use them."""

    store_url: str
    handles: dict
    store_env: dict[str, str]

    def cli_env(self, tmp: Path) -> dict[str, str]:
        """An isolated CLI environment (own HOME, runs folder) pointed at these services and store."""
        return make_env(tmp, **self.store_env, CDISSECT_AUTH_TOKEN=TOKEN,
                        CDISSECT_EMBEDDER=self.handles["embedder"].endpoint,
                        CDISSECT_ACTIVATIONS=self.handles["activations"].endpoint,
                        CDISSECT_LABELER=self.handles["labeler"].endpoint)

    def open_store(self):
        """The store the services write to, opened in the test process."""
        from cdissect_common.config import load_settings
        from cdissect_common.store import open_store

        return open_store(self.store_url, load_settings(env=self.store_env, config_file=None))


def _start(store_env: dict[str, str], logs: Path) -> Iterator[SharedServices]:
    conftest = integration_conftest()
    env = {**store_env, "CDISSECT_AUTH_TOKEN": TOKEN}
    # Small pools where only shard calls are capped (4 of 8 threads); the embedder's inline calls
    # (48 at once by default) need its default pool.
    threads = {"activations": {"CDISSECT_MAX_WORKERS": "8"}, "labeler": {"CDISSECT_MAX_WORKERS": "8"}}
    handles = {name: conftest.launch_service(name, {**env, **threads.get(name, {})}, logs, wait=False)
               for name in conftest.SERVICES}
    try:
        for handle in handles.values():
            handle.wait_serving(240)
        yield SharedServices(store_env["CDISSECT_STORE"], handles, store_env)
    finally:
        for handle in handles.values():
            handle.kill()


@pytest.fixture(scope="session")
def fs_shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedServices]:
    """The three services on a filesystem store, with auth."""
    store = f"file://{tmp_path_factory.mktemp('shared-store')}"
    yield from _start({"CDISSECT_STORE": store}, tmp_path_factory.mktemp("shared-logs"))


@pytest.fixture(scope="session")
def s3_shared(seaweedfs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedServices]:
    """The three services on the session's SeaweedFS (own prefix), with auth."""
    env = {**seaweedfs.env(), "CDISSECT_STORE": f"{seaweedfs.store_url}/reliability"}
    yield from _start(env, tmp_path_factory.mktemp("s3-shared-logs"))
