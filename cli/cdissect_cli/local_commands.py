"""`cdissect up`, `down` and `status`: long-lived local services and a health overview."""
from __future__ import annotations

from typing import Annotated

import grpc
import typer
from rich.console import Console
from rich.table import Table

from cdissect_cli.cli_settings import cdissect_home, load_cli_settings, service_env
from cdissect_cli.connection import health_status, local_settings, state_path
from cdissect_cli.errors import CliError
from cdissect_cli.local import (
    HEALTH_NAMES, SERVICES, LocalServices, clear_state, read_state, stop_processes, write_state)
from cdissect_cli.options import ConfigOpt, StoreOpt


def up(
    config: ConfigOpt = None, store: StoreOpt = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every service to be SERVING.")] = 120.0,
) -> None:
    """Start the three services locally in the background; later commands use them until `cdissect down`."""
    console = Console(stderr=True)
    path = state_path()
    state = read_state(path)
    if state is not None:
        services, store_url = state
        console.print(f"local services already running (store {store_url}); `cdissect down` stops them")
        _print_services(services)
        return
    settings = load_cli_settings(config, store=store)
    local = LocalServices(
        store_url=settings.store, log_dir=cdissect_home() / "logs", detached=True,
        health_check=lambda ep, name, t: health_status(ep, name, local_settings(settings), t),
        extra_env=service_env(settings))
    services = local.start(timeout_s=timeout)
    write_state(path, services, settings.store)
    console.print(f"local services started with store {settings.store} (state: {path})")
    _print_services(services)


def _print_services(services: dict) -> None:
    table = Table(show_edge=False)
    for column in ("service", "endpoint", "pid", "metrics", "log"):
        table.add_column(column)
    for name, svc in services.items():
        table.add_row(name, svc.endpoint, str(svc.pid), f"127.0.0.1:{svc.metrics_port}", svc.log)
    Console().print(table)


def down() -> None:
    """Stop the services started by `cdissect up`."""
    path = state_path()
    state = read_state(path)
    if state is None:
        if path.exists():
            clear_state(path)
            typer.echo(f"no local services are running; removed the stale state file {path} (its processes are "
                       f"gone, and a pid now used by another process was left alone)")
        else:
            typer.echo("no local services are running")
        return
    services, _ = state
    stop_processes(list(services.values()))
    clear_state(path)
    typer.echo(f"stopped {', '.join(sorted(services))}")


def status(config: ConfigOpt = None) -> None:
    """Health of each service: configured endpoints first, else the ones `cdissect up` started."""
    settings = load_cli_settings(config)
    state = read_state(state_path())
    table = Table(show_edge=False)
    for column in ("service", "endpoint", "source", "health"):
        table.add_column(column)
    all_serving = True
    for service in SERVICES:
        configured = list(settings.endpoints(service))
        if configured:
            endpoints, source, talk = configured, "configured", settings
        elif state is not None and service in state[0]:
            endpoints, source, talk = [state[0][service].endpoint], "cdissect up", local_settings(settings)
        else:
            table.add_row(service, "-", "none", "not running (`cdissect up`, or `run` starts it)")
            all_serving = False
            continue
        for endpoint in endpoints:
            try:
                health = health_status(endpoint, HEALTH_NAMES[service], talk, timeout_s=3.0)
            except grpc.RpcError as err:
                health = f"{err.code().name}: {err.details()}"
            all_serving &= health == "SERVING"
            table.add_row(service, endpoint, source, health)
    Console().print(table)
    if state is not None:
        Console().print(f"store of local services: {state[1]}")
    if not all_serving:
        raise CliError("not every service is SERVING")
