"""Processes: the services of an embedded run die with the CLI, `cdissect down` signals only its
own processes, and the shutdown grace bounds a service's exit even when a call never returns."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from cdissect.v1 import common_pb2, labeler_pb2
from cdissect_cli.local import ServiceProcess, is_our_service, pid_alive, process_start_token
from tests.integration.conftest import launch_service
from tests.integration.test_cli_support import child_pids, make_env, run_args, start_cli, wait_for, write_probe, \
    write_words
from tests.reliability.hung_store import hang_object, readers_blocked, release

ZERO = "0" * 64


def _sleeper(*argv: str) -> subprocess.Popen:
    """A process that sleeps; extra argv shows in its command line (sys.argv of `python -c`)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *argv])


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cdissect_cli.app", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def _state_file(env: dict[str, str]) -> Path:
    return Path(env["XDG_CACHE_HOME"]) / "cdissect" / "local-services.json"


def _down_with_state(env: dict[str, str], name: str, entry: dict, stranger: subprocess.Popen) -> str:
    """Write a state file recording `entry` as service `name`, run `cdissect down`, check that
    `stranger` (the process now owning the pid) is left alone; returns down's output."""
    path = _state_file(env)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"store": "file:///s", "services": {name: entry}}))
    proc = _cli(["down"], env)
    assert proc.returncode == 0 and not path.exists(), proc.stderr
    time.sleep(0.3)
    assert stranger.poll() is None, "cdissect down signalled a process it did not start"
    return proc.stdout


def test_down_leaves_alone_a_pid_that_now_belongs_to_another_process(tmp_path: Path) -> None:
    """The state file names a service whose pid the system has since given to another process
    (simulated: same pid, other start time); even a look-alike command line is not enough."""
    env = make_env(tmp_path)
    stranger = _sleeper("-m", "cdissect_embedder")
    try:
        wait_for(lambda: process_start_token(stranger.pid), 10, "the sleeper's /proc entry")
        recorded = ServiceProcess("embedder", stranger.pid, 50051, 9101, "e.log", started="ticks:1")
        assert not is_our_service(recorded)
        assert "stale state file" in _down_with_state(env, "embedder", recorded.__dict__, stranger)
    finally:
        stranger.kill()
        stranger.wait()


def test_down_does_not_trust_an_old_state_file_without_start_times(tmp_path: Path) -> None:
    """A state file of an older version (no start time) is trusted only for a process that runs
    the recorded service's module."""
    env = make_env(tmp_path)
    stranger = _sleeper()
    try:
        old_entry = {"name": "labeler", "pid": stranger.pid, "port": 1, "metrics_port": 2, "log": "l.log"}
        assert "no local services are running" in _down_with_state(env, "labeler", old_entry, stranger)
    finally:
        stranger.kill()
        stranger.wait()


def test_the_state_file_recognises_a_live_service_it_recorded(tmp_path: Path) -> None:
    """The other side: the recorded process itself (same pid, same start time) is ours."""
    own = _sleeper()
    try:
        wait_for(lambda: process_start_token(own.pid), 10, "the sleeper's /proc entry")
        assert is_our_service(ServiceProcess("embedder", own.pid, 1, 2, "", started=process_start_token(own.pid)))
    finally:
        own.kill()
        own.wait()


@pytest.mark.slow
def test_the_shutdown_grace_bounds_the_exit_while_a_call_hangs(tmp_path: Path) -> None:
    """A LabelLayer call blocks for good on a store read; SIGTERM with a 2 s grace must still
    end the process within a few seconds (before: it waited for the call forever)."""
    root = tmp_path / "store"
    handle = launch_service("labeler", {"CDISSECT_STORE": f"file://{root}", "CDISSECT_SHUTDOWN_GRACE_SECONDS": "2"},
                            tmp_path / "logs")
    text_key = f"embeddings/text/{ZERO}.safetensors"
    fifo = hang_object(root, text_key)
    try:
        def ref(key: str) -> common_pb2.ArtifactRef:
            return common_pb2.ArtifactRef(key=key, sha256=ZERO, shape=[4, 8])

        stub = handle.stub(token=None)
        call = stub.LabelLayer.future(labeler_pb2.LabelLayerRequest(
            layer="layer1", image_embeddings=[ref("embeddings/image/a.safetensors")],
            activations=[ref("activations/a.safetensors")], text_embeddings=ref(text_key)), timeout=120)
        wait_for(lambda: readers_blocked(handle.proc.pid), 60, "the labeler to block on the store read")
        started = time.monotonic()
        handle.proc.send_signal(signal.SIGTERM)
        try:
            code = handle.proc.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the labeler was still running 30 s after SIGTERM with a 2 s grace:\n{handle.log()[-2000:]}")
        took = time.monotonic() - started
        assert code == 0 and took < 2 + 5, (code, took)
        assert "1 call(s) still running; they are abandoned" in handle.log()
        with pytest.raises(grpc.RpcError):
            call.result(timeout=10)
    finally:
        release(fifo)
        handle.kill()


@pytest.mark.slow
def test_sigkill_of_the_cli_leaves_no_service_behind(tmp_path: Path, tiny_clip_checkpoint: Path) -> None:
    """`cdissect run` (embedded services) is SIGKILLed once its three services are up: they must
    exit on their own within seconds (before: they ran on forever, holding their models)."""
    env = make_env(tmp_path)
    probe, words = write_probe(tmp_path / "probe", 12), write_words(tmp_path / "words.txt")
    cli = start_cli(run_args(probe, words, tiny_clip_checkpoint, layers="layer4", shard_size=4), env)
    services: list[int] = []
    try:
        def started() -> list[int]:
            assert cli.poll() is None, f"the run ended early:\n{cli.communicate()[1][-3000:]}"
            return [pid for pid, cmd in child_pids(cli.pid) if "-m cdissect_" in cmd]

        services = wait_for(lambda: len(started()) == 3 and started(), 120, "three local services")
        logs = Path(env["XDG_CACHE_HOME"]) / "cdissect" / "logs"
        wait_for(lambda: sum("SERVING" in p.read_text(errors="replace") for p in logs.glob("*.log")) == 3, 180,
                 "the local services to be SERVING")
        cli.kill()
        cli.wait(10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(pid_alive(pid) for pid in services):
            time.sleep(0.1)
        left = [pid for pid in services if pid_alive(pid)]
        assert not left, f"services {left} outlived the killed CLI"
        text = "".join(p.read_text(errors="replace") for p in logs.glob("*.log"))
        assert text.count(f"parent process {cli.pid} has exited") + text.count("received SIGTERM") >= 3, text[-3000:]
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        for pid in services:  # never leave them running, whatever the outcome
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
