"""cdissect_cli.app: every command is registered, and a broken import fails loudly instead of
silently dropping commands."""
from __future__ import annotations

import subprocess
import sys

import typer

from cdissect_cli.app import app


def test_all_commands_are_registered() -> None:
    names = set(typer.main.get_command(app).commands)
    assert {"run", "up", "down", "status", "models", "layers", "concepts", "datasets", "demo",
            "report", "eval", "explain", "analyze", "compare"} <= names


def test_an_import_error_in_a_command_module_is_not_swallowed() -> None:
    code = ("import sys; sys.modules['cdissect_cli.analysis_commands'] = None\n"
            "import cdissect_cli.app")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "analysis_commands" in proc.stderr.splitlines()[-1], proc.stderr[-2000:]
