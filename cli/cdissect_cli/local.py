"""Local mode: the three services as processes on this machine, on free loopback ports.

With no endpoints configured, `cdissect run` calls `LocalServices.start()` (the embedded
default), runs, and stops them after, also on Ctrl-C or an error. `cdissect up` starts them
detached and records pids and ports in a state file, so that later `run`/`status` find them
and `cdissect down` can stop them. Each service is started exactly as in production
(`python -m cdissect_<service>`, configured by `CDISSECT_*` environment variables) with the
filesystem store, and counts as started when its gRPC health check says SERVING.

Services started for one command are bound to the CLI's process (`CDISSECT_PARENT_PID`, see
`cdissect_common.lifetime`): if the CLI is killed, they stop too. The state file records each
process's start time, so a pid that the system has since given to another process is never
signalled by `cdissect down`.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

from cdissect_common.config import SERVICE_DEFAULTS

from cdissect_cli.errors import CliError

SERVICES = tuple(SERVICE_DEFAULTS)  # embedder, activations, labeler
HEALTH_NAMES = {name: d.health_name for name, d in SERVICE_DEFAULTS.items()}
STATE_FILE_NAME = "local-services.json"


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServiceProcess:
    """One started service: where it listens, its pid and its log file."""

    name: str
    pid: int
    port: int
    metrics_port: int
    log: str
    started: str = ""  # process_start_token(pid) when it was started ("" in older state files)

    @property
    def endpoint(self) -> str:
        """The gRPC target of this service."""
        return f"127.0.0.1:{self.port}"


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def process_start_token(pid: int) -> str:
    """When the process `pid` started, as an opaque token ("" if unknown or gone).

    pid and start time together name one process for good: a pid the system recycles for a new
    process comes with a new start time. Linux: clock ticks since boot from /proc; elsewhere `ps`.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return "ticks:" + handle.read().rsplit(")", 1)[-1].split()[19]
    except (OSError, IndexError):
        pass
    try:
        out = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"lstart:{out.stdout.strip()}" if out.returncode == 0 and out.stdout.strip() else ""


def process_command_line(pid: int) -> str:
    """The command line of `pid` ("" if unknown or gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def is_our_service(svc: ServiceProcess) -> bool:
    """True when `svc.pid` is still the service process that was recorded.

    With a recorded start time, the live process must have the same one; without (older state
    files), its command line must run that service's module.
    """
    if not pid_alive(svc.pid):
        return False
    if svc.started:
        return process_start_token(svc.pid) == svc.started
    module = SERVICE_DEFAULTS[svc.name].module if svc.name in SERVICE_DEFAULTS else ""
    return bool(module) and f"-m {module}" in process_command_line(svc.pid)


def _log_tail(path: str, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


HealthCheck = Callable[[str, str, float], str]
"""(endpoint, health service name, timeout seconds) -> status name such as 'SERVING'."""


class LocalServices:
    """Start, watch and stop the three services as child processes of this machine."""

    def __init__(self, store_url: str, log_dir: Path, health_check: HealthCheck,
                 extra_env: dict[str, str] | None = None, detached: bool = False) -> None:
        """`detached` services (`cdissect up`) outlive this process; the others die with it."""
        self.store_url = store_url
        self.log_dir = Path(log_dir)
        self.health_check = health_check
        self.extra_env = dict(extra_env or {})
        self.detached = detached
        self.processes: dict[str, ServiceProcess] = {}
        self._popen: dict[str, subprocess.Popen] = {}

    def _env(self, name: str, port: int, metrics_port: int) -> dict[str, str]:
        env = dict(os.environ)
        # Endpoints meant for the CLI must not leak into the services' configuration.
        for key in ("CDISSECT_EMBEDDER", "CDISSECT_ACTIVATIONS", "CDISSECT_LABELER"):
            env.pop(key, None)
        env.update(self.extra_env)
        env.update({
            "CDISSECT_HOST": "127.0.0.1",
            "CDISSECT_PORT": str(port),
            "CDISSECT_METRICS_PORT": str(metrics_port),
            "CDISSECT_STORE": self.store_url,
            "PYTHONUNBUFFERED": "1",
        })
        if self.detached:
            env.pop("CDISSECT_PARENT_PID", None)
        else:
            env["CDISSECT_PARENT_PID"] = str(os.getpid())
        return env

    def start(self, timeout_s: float = 120.0, names: Iterable[str] = SERVICES) -> dict[str, ServiceProcess]:
        """Start the services and wait until each reports SERVING; stop all of them on failure.

        Services bound to this process must be started from the main thread: Linux sends a
        child its parent-death signal when the *thread* that forked it ends.
        """
        if not self.detached and threading.current_thread() is not threading.main_thread():
            raise RuntimeError("LocalServices.start must run on the main thread (the services' parent-death "
                               "signal follows the thread that starts them)")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            for name in names:
                port, metrics_port = free_loopback_port(), free_loopback_port()
                log = self.log_dir / f"{name}-{port}.log"
                handle = open(log, "ab")
                try:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", SERVICE_DEFAULTS[name].module], env=self._env(name, port, metrics_port),
                        stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                        start_new_session=self.detached)
                finally:
                    handle.close()
                self._popen[name] = proc
                self.processes[name] = ServiceProcess(name, proc.pid, port, metrics_port, str(log),
                                                      started=process_start_token(proc.pid))
            self.wait_serving(timeout_s)
        except BaseException:
            self.stop()
            raise
        return dict(self.processes)

    def wait_serving(self, timeout_s: float) -> None:
        """Poll every started service's health until SERVING; raise CliError naming a failure."""
        deadline = time.monotonic() + timeout_s
        pending = dict(self.processes)
        while pending:
            for name, svc in list(pending.items()):
                proc = self._popen.get(name)
                if proc is not None and proc.poll() is not None:
                    raise CliError(f"local {name} service exited with code {proc.returncode} while starting; "
                                   f"its log ({svc.log}) ends with:\n{_log_tail(svc.log)}")
                try:
                    status = self.health_check(svc.endpoint, HEALTH_NAMES[name], 2.0)
                except Exception:  # noqa: BLE001 - not listening yet: keep polling until the deadline
                    status = "UNREACHABLE"
                if status == "SERVING":
                    del pending[name]
            if not pending:
                return
            if time.monotonic() > deadline:
                names = ", ".join(sorted(pending))
                first = next(iter(pending.values()))
                raise CliError(f"local service(s) {names} not SERVING after {timeout_s:.0f} s; "
                               f"see the log {first.log}:\n{_log_tail(first.log)}")
            time.sleep(0.2)

    def exit_note(self, name: str) -> str | None:
        """If the local `name` service has died, a note with its exit code and log tail; else None."""
        proc, svc = self._popen.get(name), self.processes.get(name)
        if proc is None or svc is None or proc.poll() is None:
            return None
        return f"the local {name} service exited with code {proc.returncode}; its log ({svc.log}) ends with:\n" \
               f"{_log_tail(svc.log)}"

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop every started service: SIGTERM, then SIGKILL after `grace_s`."""
        stop_processes(list(self.processes.values()), grace_s, self._popen)
        self.processes.clear()
        self._popen.clear()

    def __enter__(self) -> "LocalServices":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_processes(services: list[ServiceProcess], grace_s: float = 10.0,
                   popen: dict[str, subprocess.Popen] | None = None) -> None:
    """SIGTERM each service process, wait up to `grace_s`, SIGKILL the ones still alive."""
    popen = popen or {}
    for svc in services:
        try:
            os.kill(svc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    for svc in services:
        proc = popen.get(svc.name)
        while time.monotonic() < deadline:
            if proc is not None:
                if proc.poll() is not None:
                    break
            elif not pid_alive(svc.pid):
                break
            time.sleep(0.05)
        else:
            try:
                os.kill(svc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


# --- state file for `cdissect up` / `down` / `status` ---------------------------------------

def write_state(path: Path, services: dict[str, ServiceProcess], store_url: str) -> None:
    """Record detached services (pids, ports, logs) and their store in the state file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"store": store_url, "services": {name: asdict(svc) for name, svc in services.items()}}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def read_state(path: Path) -> tuple[dict[str, ServiceProcess], str] | None:
    """The recorded services that are still running, and their store; None if none.

    A recorded pid whose process is gone, or now belongs to another process, is left out
    (see `is_our_service`), so no caller ever signals a stranger.
    """
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        services = {name: ServiceProcess(**fields) for name, fields in doc["services"].items()}
        store = str(doc["store"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as err:
        raise CliError(f"the local services state file {path} is damaged ({err}); "
                       f"stop stray services by hand and delete the file") from err
    alive = {name: svc for name, svc in services.items() if is_our_service(svc)}
    return (alive, store) if alive else None


def clear_state(path: Path) -> None:
    """Delete the state file if it exists."""
    try:
        Path(path).unlink()
    except FileNotFoundError:
        pass
