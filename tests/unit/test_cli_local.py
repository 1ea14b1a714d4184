"""Local-mode plumbing: the `cdissect up` state file, process stopping, settings precedence."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cdissect_cli.cli_settings import expand_store_url, load_cli_settings
from cdissect_cli.errors import CliError
from cdissect_cli.local import (ServiceProcess, clear_state, pid_alive, process_start_token, read_state,
                                stop_processes, write_state)


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_state_file_round_trip_keeps_only_live_processes(tmp_path: Path) -> None:
    alive = _sleeper()
    dead = _sleeper()
    dead.kill()
    dead.wait()
    try:
        path = tmp_path / "state.json"
        write_state(path, {"embedder": ServiceProcess("embedder", alive.pid, 5001, 9001, "e.log",
                                                      started=process_start_token(alive.pid)),
                           "labeler": ServiceProcess("labeler", dead.pid, 5003, 9003, "l.log")}, "file:///s")
        services, store = read_state(path)
        assert store == "file:///s" and list(services) == ["embedder"]
        assert services["embedder"].endpoint == "127.0.0.1:5001"
        clear_state(path)
        assert read_state(path) is None
    finally:
        alive.kill()
        alive.wait()


def test_damaged_state_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{not json")
    with pytest.raises(CliError, match=str(path)):
        read_state(path)


def test_stop_processes_terminates_then_kills(tmp_path: Path) -> None:
    polite = _sleeper()
    stubborn = subprocess.Popen([sys.executable, "-c",
                                 "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                 "print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert stubborn.stdout.readline().strip() == "ready"
    services = [ServiceProcess("a", polite.pid, 1, 2, ""), ServiceProcess("b", stubborn.pid, 3, 4, "")]
    stop_processes(services, grace_s=1.0, popen={"a": polite, "b": stubborn})
    assert polite.poll() is not None and stubborn.poll() is not None
    assert not pid_alive(polite.pid) and not pid_alive(stubborn.pid)


def test_settings_precedence_flag_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("runs_dir: from-file\nstore: file:///from-file\nembedder: a:1,b:2\n")
    monkeypatch.setenv("CDISSECT_CONFIG", str(config))
    monkeypatch.delenv("CDISSECT_RUNS_DIR", raising=False)
    monkeypatch.delenv("CDISSECT_STORE", raising=False)
    monkeypatch.delenv("CDISSECT_EMBEDDER", raising=False)
    settings = load_cli_settings()
    assert settings.runs_dir == "from-file" and settings.store == "file:///from-file"
    assert settings.endpoints("embedder") == ("a:1", "b:2")
    monkeypatch.setenv("CDISSECT_RUNS_DIR", "from-env")
    assert load_cli_settings().runs_dir == "from-env"
    assert load_cli_settings(runs_dir="from-flag").runs_dir == "from-flag"


def test_bad_settings_are_user_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("stroe: file:///x\n")
    monkeypatch.setenv("CDISSECT_CONFIG", str(config))
    with pytest.raises(CliError, match="stroe"):
        load_cli_settings()


def test_store_urls_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert expand_store_url("file://~/store") == f"file://{tmp_path}/store"
    assert expand_store_url("s3://bucket/prefix") == "s3://bucket/prefix"
    with pytest.raises(CliError, match="no scheme"):
        expand_store_url("/abs/folder")
