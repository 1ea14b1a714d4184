"""Where the services are for one command: configured endpoints, `cdissect up`, or started now.

For each service the CLI needs, in order:
  1. endpoints from flags / CDISSECT_<SERVICE> / the config file (a cluster, or replicas);
  2. services started earlier by `cdissect up` (recorded in the local state file);
  3. otherwise the embedded default: start them now as local processes, stop them on exit.
A `Connection` is a context manager; inside it `store` is the object store the services share
and `dispatcher(service)` sends shard RPCs to every replica of a service (one channel per
endpoint; gRPC resolves each name and round-robins over its addresses, see
`cdissect_common.clients`).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import grpc
from cdissect_common.clients import EndpointError, make_channel, make_stub, replica_count
from cdissect_common.config import Settings
from cdissect_common.retry import policy_from_settings
from cdissect_common.store import ObjectStore, StoreConfigError, StoreError, StoreUnavailableError, open_store
from rich.console import Console

from cdissect_cli.cli_settings import cdissect_home, service_env
from cdissect_cli.dispatch import ShardDispatcher
from cdissect_cli.errors import CliError, InputError
from cdissect_cli.local import HEALTH_NAMES, SERVICES, STATE_FILE_NAME, LocalServices, read_state
from cdissect_cli.options import ConnectionFlags


def state_path() -> Path:
    """The state file of services started by `cdissect up`."""
    return cdissect_home() / STATE_FILE_NAME


def health_status(endpoint: str, health_name: str, settings: Settings, timeout_s: float = 2.0) -> str:
    """grpc.health.v1 status name of `health_name` at `endpoint` (raises grpc.RpcError if unreachable)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = make_channel(endpoint, settings)
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=health_name), timeout=timeout_s)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    finally:
        channel.close()


def local_settings(settings: Settings) -> Settings:
    """Settings for talking to local loopback services: same token, no TLS."""
    return settings.replace(tls_ca="", tls_cert="", tls_key="")


class Connection:
    """The services and the store of one CLI command (see the module docstring)."""

    def __init__(self, settings: Settings, flags: ConnectionFlags, console: Console | None = None,
                 need: tuple[str, ...] = SERVICES, open_object_store: bool = True) -> None:
        self.settings = settings
        self.flags = flags
        self.console = console or Console(stderr=True)
        self.need = need
        self.open_object_store = open_object_store
        self.policy = policy_from_settings(settings)  # of the shard calls (open_store makes the store's)
        self.endpoints: dict[str, list[str]] = {}
        self.mode: dict[str, str] = {}
        self.store_url = settings.store
        self.local: LocalServices | None = None
        self._store: ObjectStore | None = None
        self._channels: list[grpc.Channel] = []
        self._dispatchers: dict[str, ShardDispatcher] = {}

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> "Connection":
        try:
            self._resolve()
            if self.open_object_store:
                self._store = self._open_store()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close channels and stop services this connection started."""
        for channel in self._channels:
            with contextlib.suppress(Exception):
                channel.close()
        self._channels.clear()
        if self.local is not None:
            self.console.print("stopping local services", style="dim")
            self.local.stop()
            self.local = None

    def _resolve(self) -> None:
        missing = []
        for service in self.need:
            configured = list(self.settings.endpoints(service))
            if configured:
                self.endpoints[service], self.mode[service] = configured, "configured"
            else:
                missing.append(service)
        state = read_state(state_path())
        if not self.need and state is not None and self.settings.sources.get("store", "default") == "default":
            self.store_url = state[1]  # store-only commands follow the services of `cdissect up`
        if not missing:
            return
        if state is not None and all(s in state[0] for s in missing):
            services, store = state
            if self.settings.sources.get("store", "default") != "default" and store != self.settings.store:
                raise InputError(f"the local services started by `cdissect up` use the store {store}, but "
                                 f"{self.settings.store} was asked for; run `cdissect down` first, or drop --store / "
                                 f"CDISSECT_STORE")
            self.store_url = store
            for service in missing:
                self.endpoints[service], self.mode[service] = [services[service].endpoint], "up"
            return
        for service in missing:
            self.mode[service] = "embedded"  # started on first use (see _start_embedded)

    def _start_embedded(self) -> None:
        """Start every service marked 'embedded' as a local process (once), with the CLI's store."""
        missing = [s for s in self.need if self.mode.get(s) == "embedded" and s not in self.endpoints]
        if not missing:
            return
        self.console.print(f"starting local services ({', '.join(missing)}) with store {self.settings.store}",
                           style="dim", markup=False)
        self.local = LocalServices(
            store_url=self.settings.store, log_dir=cdissect_home() / "logs",
            health_check=lambda ep, name, t: health_status(ep, name, local_settings(self.settings), t),
            extra_env=service_env(self.settings))
        started = self.local.start(timeout_s=max(120.0, self.settings.retry_timeout), names=missing)
        for service in missing:
            self.endpoints[service] = [started[service].endpoint]

    def _open_store(self) -> ObjectStore:
        try:
            return open_store(self.store_url, self.settings)
        except StoreUnavailableError as err:  # its message names the store, endpoint and budget
            raise CliError(str(err)) from err
        except (StoreConfigError, ValueError) as err:
            raise InputError(f"cannot open the object store {self.store_url}: {err}") from err
        except StoreError as err:
            raise CliError(f"cannot open the object store {self.store_url}: {err}") from err
        except Exception as err:  # noqa: BLE001 - refused by the server (credentials, bucket rights)
            raise InputError(f"the object store {self.store_url} refused the connection: {type(err).__name__}: {err}; "
                             f"check CDISSECT_S3_ENDPOINT and the access keys") from err

    # -- use ----------------------------------------------------------------------------------
    @property
    def store(self) -> ObjectStore:
        """The object store shared with the services."""
        if self._store is None:
            raise CliError("this command did not open the object store")
        return self._store

    def _settings_for(self, service: str) -> Settings:
        return self.settings if self.mode[service] == "configured" else local_settings(self.settings)

    def endpoints_of(self, service: str) -> list[str]:
        """The endpoints of a service, as configured (or of the local services).

        The first call for an embedded service starts the local services, so commands that fail
        on their input (a missing concept file, a corrupt image) fail before any process starts.
        """
        self._start_embedded()
        return list(self.endpoints[service])

    def stub(self, service: str, endpoint: str | None = None) -> Any:
        """A stub of `service` on a new channel to `endpoint` (default: its first), closed with the connection."""
        try:
            channel = make_channel(endpoint or self.endpoints_of(service)[0], self._settings_for(service))
        except EndpointError as err:
            raise InputError(f"{service} endpoint: {err}") from err
        self._channels.append(channel)
        return make_stub(service, channel)

    def dispatcher(self, service: str, per_replica: int = 2) -> ShardDispatcher:
        """The shard dispatcher of a service (one per connection): `per_replica` calls in flight for
        each address the service's endpoints resolve to now."""
        if service not in self._dispatchers:
            endpoints = self.endpoints_of(service)
            try:
                replicas = sum(replica_count(endpoint) for endpoint in endpoints)
            except EndpointError as err:
                raise InputError(f"{service} endpoint: {err}") from err
            self._dispatchers[service] = ShardDispatcher(
                service, endpoints, lambda endpoint: self.stub(service, endpoint), deadline_s=self.flags.deadline_s,
                policy=self.policy, workers=per_replica * replicas)
        return self._dispatchers[service]

    def exit_note(self, service: str) -> str | None:
        """Why a local service this connection started is gone (exit code, log tail), if it is."""
        return self.local.exit_note(service) if self.local is not None else None

    def describe(self) -> str:
        """One line per service: where it runs."""
        return "; ".join(f"{s}: {','.join(self.endpoints.get(s, ['(not started)']))} ({self.mode[s]})"
                         for s in self.need)


def health_name(service: str) -> str:
    """The grpc.health.v1 service name of a cdissect service."""
    return HEALTH_NAMES[service]
