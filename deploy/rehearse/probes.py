"""Kubernetes probes against local processes, with the kubelet's order and timings.

The startupProbe runs first (every ``periodSeconds`` after ``initialDelaySeconds``, until one
success or ``failureThreshold`` failures in a row); then readiness and liveness run side by side
on their own periods for as long as the rehearsal lasts. A container is *ready* once its
readiness and liveness probes have each passed once. A failure names the probe's field.

Two answers end the wait at once instead of after ``failureThreshold x periodSeconds`` (15
minutes for the startupProbe): the health server answering that it does not know the probe's
service name, and the process listening on its ports (unchanged for SETTLE_S seconds) while
the probe's port is not among them. The process exiting ends it too.
"""
from __future__ import annotations

import socket
import threading
from collections.abc import Callable
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deploy.rehearse.loopback import listening_ports
from deploy.rehearse.pods import Probe
from deploy.rehearse.processes import Process

SETTLE_S = 5.0   # seconds a process's set of listening ports must stay the same to count as final


@dataclass
class Outcome:
    """One probe attempt."""

    ok: bool
    detail: str
    refused: bool = False            # nothing listens on the port
    unknown_service: bool = False    # gRPC health does not know the service name


def check(probe: Probe) -> Outcome:
    """Ask once, the way the kubelet would (gRPC health Check, HTTP GET 200-399, TCP connect)."""
    address = f"127.0.0.1:{probe.local_port}"
    if probe.handler == "grpc":
        with grpc.insecure_channel(address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=probe.service), timeout=probe.timeout)
            except grpc.RpcError as exc:
                code = exc.code()
                return Outcome(False, f"{code.name}: {exc.details()}", refused=code == grpc.StatusCode.UNAVAILABLE,
                               unknown_service=code == grpc.StatusCode.NOT_FOUND)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return Outcome(reply.status == health_pb2.HealthCheckResponse.SERVING, status)
    if probe.handler == "httpGet":
        try:
            with urllib.request.urlopen(f"http://{address}{probe.path}", timeout=probe.timeout) as reply:
                return Outcome(200 <= reply.status < 400, f"HTTP {reply.status}")
        except urllib.error.HTTPError as exc:
            return Outcome(False, f"HTTP {exc.code}")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return Outcome(False, str(reason), refused=isinstance(reason, ConnectionRefusedError))
    try:
        with socket.create_connection(("127.0.0.1", probe.local_port), timeout=probe.timeout):
            return Outcome(True, "connected")
    except ConnectionRefusedError as exc:
        return Outcome(False, str(exc), refused=True)
    except OSError as exc:
        return Outcome(False, str(exc))


class ProbeFailure(Exception):
    """A probe failed the way Kubernetes would act on (restart, never ready, removed from endpoints)."""


class Prober:
    """Runs one container's probes in a thread; ``ready`` is set once it is ready, ``failure`` says why not."""

    def __init__(self, process: Process, log: Callable[[str], None]) -> None:
        self.process = process
        self.probes = {p.kind: p for p in process.plan.probes}
        self.log = log
        self.ready = threading.Event()
        self.failure: str | None = None
        self.exited = False
        self.counts: dict[str, list[int]] = {kind: [0, 0] for kind in self.probes}   # kind -> [passed, failed]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"probe {process.label}", daemon=True)

    def start(self) -> "Prober":
        """Begin probing in the background."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop probing (the process keeps running)."""
        self._stop.set()
        self._thread.join(10)

    def _sleep_until(self, moment: float) -> bool:
        """False when asked to stop."""
        return not self._stop.wait(max(0.0, moment - time.monotonic()))

    def _run(self) -> None:
        try:
            startup = self.probes.get("startupProbe")
            if startup is not None:
                self._startup(startup)
            self._steady()
        except ProbeFailure as failure:
            self.failure = str(failure)
            self.ready.set()

    def _attempt(self, probe: Probe) -> Outcome:
        code = self.process.poll()
        if code is not None:
            self.exited = True
            raise ProbeFailure(f"{self.process.label} exited with code {code} (its {probe.kind} had passed "
                               f"{self.counts[probe.kind][0]} time(s)); Kubernetes would restart it")
        outcome = check(probe)
        self.counts[probe.kind][0 if outcome.ok else 1] += 1
        if not outcome.ok:
            self._fail_fast(probe, outcome)
        return outcome

    def _fail_fast(self, probe: Probe, outcome: Outcome) -> None:
        if outcome.unknown_service:
            raise ProbeFailure(f"{probe.service_where} = {probe.service!r}: the process answers grpc.health.v1 on "
                               f"port {probe.port} but knows no service of that name ({outcome.detail})")
        if not outcome.refused:
            return
        ports = frozenset(listening_ports(self.process.pid))
        if not ports or probe.local_port in ports:
            return
        # The process listens, but not on the probe's port: once that holds for SETTLE_S, it is final.
        if self._stop.wait(SETTLE_S) or frozenset(listening_ports(self.process.pid)) != ports:
            return
        again = check(probe)
        if again.ok or not again.refused:
            return
        pod = self.process.plan.pod
        listening = ", ".join(sorted(pod.port_label(p) for p in ports))
        raise ProbeFailure(f"{probe.where} = {probe.port}: nothing listens on that port; the process listens on "
                           f"{listening}. Kubernetes would fail this {probe.kind} {probe.failure_threshold} times "
                           f"and restart the container")

    def _startup(self, probe: Probe) -> None:
        if not self._sleep_until(self.process.started + probe.initial_delay):
            return
        failures = 0
        while True:
            outcome = self._attempt(probe)
            if outcome.ok:
                self.log(f"{self.process.label} {probe.kind} ({probe.describe()}) passed after "
                         f"{time.monotonic() - self.process.started:.0f} s")
                return
            failures += 1
            if failures >= probe.failure_threshold:
                raise ProbeFailure(f"{probe.where}: {probe.kind} ({probe.describe()}) failed {failures} times in a "
                                   f"row ({outcome.detail}); Kubernetes would restart the container")
            if not self._sleep_until(time.monotonic() + probe.period):
                return

    def _steady(self) -> None:
        """Readiness and liveness, each on its own period, until stopped."""
        steady = [self.probes[k] for k in ("readinessProbe", "livenessProbe") if k in self.probes]
        if not steady:
            self.ready.set()
            return
        due = {p.kind: max(time.monotonic(), self.process.started + p.initial_delay) for p in steady}
        streak = {p.kind: 0 for p in steady}
        passed: set[str] = set()
        while True:
            probe = min(steady, key=lambda p: due[p.kind])
            if not self._sleep_until(due[probe.kind]):
                return
            outcome = self._attempt(probe)
            due[probe.kind] = time.monotonic() + probe.period
            if outcome.ok:
                streak[probe.kind] = 0
                if probe.kind not in passed:
                    passed.add(probe.kind)
                    self.log(f"{self.process.label} {probe.kind} ({probe.describe()}) passed")
                    if len(passed) == len(steady):
                        self.ready.set()
                continue
            streak[probe.kind] += 1
            if streak[probe.kind] >= probe.failure_threshold:
                consequence = ("Kubernetes would restart the container" if probe.kind == "livenessProbe" else
                               "Kubernetes would keep the pod out of its Services")
                raise ProbeFailure(f"{probe.where}: {probe.kind} ({probe.describe()}) failed {streak[probe.kind]} "
                                   f"times in a row ({outcome.detail}); {consequence}")


def wait_ready(probers: list[Prober], timeout: float, watch: Callable[[], None] = lambda: None) -> None:
    """Until every prober is ready; raises ProbeFailure on the first failure or at the timeout.
    ``watch`` is called every second (it raises to abort, e.g. when a Job failed)."""
    deadline = time.monotonic() + timeout
    while True:
        for prober in probers:
            if prober.failure:
                raise ProbeFailure(prober.failure)
        if all(p.ready.is_set() for p in probers):
            return
        if time.monotonic() > deadline:
            waiting = [p.process.label for p in probers if not p.ready.is_set()]
            raise ProbeFailure(f"not ready after {timeout:.0f} s: {', '.join(waiting)}")
        watch()
        time.sleep(0.5)
