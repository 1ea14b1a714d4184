"""The `cdissect` command: a Typer app assembling the commands of the CLI's modules.

`main()` is the console-script entry point. It turns the user-facing errors of every part
(CliError, the common config/store/dataset errors) into one red line and an exit code instead
of a traceback, and turns SIGINT/SIGTERM into `Interrupted` so local services are always stopped.
This module and everything it imports must never import torch (a test checks it).
"""
from __future__ import annotations

import logging
import signal
import sys
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

from cdissect_cli import analysis_commands, catalog_commands, demo_command, local_commands, run_command
from cdissect_cli.errors import CliError, Interrupted

app = typer.Typer(
    name="cdissect", no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
    help="Label the neurons of vision networks with words via CLIP (CLIP-Dissect), over gRPC services.")

app.command("run")(run_command.run)
app.command("up")(local_commands.up)
app.command("down")(local_commands.down)
app.command("status")(local_commands.status)
app.command("models")(catalog_commands.models)
app.command("layers")(catalog_commands.layers)
app.command("concepts")(catalog_commands.concepts)
app.command("demo")(demo_command.demo)
app.add_typer(catalog_commands.datasets_app, name="datasets")

analysis_commands.register(app)


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types whose message is complete for a user (no traceback needed)."""
    from cdissect_common.config import ConfigError
    from cdissect_common.manifest import DatasetError
    from cdissect_common.store import StoreError

    return (CliError, ConfigError, DatasetError, StoreError)


def _interrupt(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def _quiet_library_logs() -> None:
    """Retry notices of the common code and urllib3 are for service logs; the CLI reports a
    failure once, in its own words (ShardFailure), instead of Python's last-resort log lines."""
    for name in ("cdissect_common", "cdissect", "urllib3"):
        logging.getLogger(name).addHandler(logging.NullHandler())


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors print one message and exit non-zero."""
    console = Console(stderr=True)
    _quiet_library_logs()
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    args = sys.argv[1:] if argv is None else argv
    try:
        app(args=args, prog_name="cdissect", standalone_mode=True)
    except _user_error_types() as err:
        console.print(Text.assemble(("error: ", "bold red"), str(err)), highlight=False, soft_wrap=True)
        sys.exit(getattr(err, "exit_code", 1))
    except Interrupted as err:
        console.print(str(err), style="yellow", markup=False)
        sys.exit(err.exit_code)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    main()
