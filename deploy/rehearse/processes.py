"""A container's process on this machine: started with exactly its planned argv, env and cwd."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from deploy.rehearse.pods import ContainerPlan


class Process:
    """One running container (its own process group, output in a log file)."""

    def __init__(self, plan: ContainerPlan, log_dir: Path) -> None:
        self.plan = plan
        self.log_path = log_dir / f"{plan.pod.kind.lower()}-{plan.pod.name}-{plan.name}.log"
        self.proc: subprocess.Popen | None = None
        self.started = 0.0

    @property
    def label(self) -> str:
        return self.plan.label

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else -1

    def start(self) -> "Process":
        """Start the process (no shell, no inherited environment)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.plan.argv, env=self.plan.env, cwd=str(self.plan.cwd), stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.started = time.monotonic()
        return self

    def poll(self) -> int | None:
        """Exit code, or None while it runs."""
        return self.proc.poll() if self.proc else None

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` s; the exit code or None if still running."""
        try:
            return self.proc.wait(timeout) if self.proc else None
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, lines: int = 25) -> str:
        """The last lines the process wrote."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def terminate(self, grace: float) -> int | None:
        """SIGTERM (what the kubelet sends), wait up to ``grace`` s, then SIGKILL; the exit code
        after SIGTERM, or None when it had to be killed."""
        if self.proc is None or self.proc.poll() is not None:
            return self.poll()
        self.proc.send_signal(signal.SIGTERM)
        code = self.wait(grace)
        if code is None:
            self.kill()
        return code

    def kill(self) -> None:
        """SIGKILL the process group and reap it."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
