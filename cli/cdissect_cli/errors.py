"""The exceptions the CLI shows to users, and the one exit-code rule of every command.

Exit codes (README "Exit codes", docs/CONTRACTS.md):
- 2, `InputError`: the input is wrong — a flag, an argument, a file or setting it names, a job
  spec, an image or checkpoint that cannot be used, or a request a service refuses as
  INVALID_ARGUMENT or PERMISSION_DENIED. Nothing is lost: the corrected command reuses whatever
  was done; the message says what to change. (Typer's own usage errors — an unknown option, a missing argument — exit 2 as well.)
- 1, `CliError`: the input was fine but the work failed — a service, the store or a download is
  unreachable or failed, stored data is damaged, a service is not SERVING. Rerunning the same
  command once that is fixed resumes the work.
- 128 + N, `Interrupted`: stopped by signal N.
Every command lets these propagate to `app.main`, which prints the message without a traceback
and exits with the code (`exit_code_for` also maps the common library's errors). Anything else is
a bug and keeps its traceback.
"""
from __future__ import annotations

from pathlib import Path


class CliError(Exception):
    """A user-facing failure of valid work (exit 1): `str(err)` is the complete message (problem, then the fix)."""

    exit_code = 1


class InputError(CliError):
    """The command's input is wrong (exit 2): the message names the input and what to give instead."""

    exit_code = 2


class SpecError(InputError):
    """The job spec (flags or YAML) is invalid."""


class Interrupted(BaseException):
    """SIGINT/SIGTERM arrived. A BaseException, so no `except Exception` (health polling, retries)
    can swallow it on its way to `app.main`, which stops local services and exits 128+signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}; finished artifacts are kept: rerun the same command "
                         f"to resume")
        self.exit_code = 128 + signum


def exit_code_for(err: BaseException) -> int:
    """The exit code of a user-facing error: the CLI's own carry it; the common library's errors
    are bad input (2) unless they report stored data or a store that failed (1)."""
    from cdissect_common.config import ConfigError
    from cdissect_common.manifest import DatasetError, ShardCorruptError
    from cdissect_common.store import StoreConfigError

    if isinstance(err, (CliError, Interrupted)):
        return err.exit_code
    if isinstance(err, ShardCorruptError):
        return 1
    if isinstance(err, (ConfigError, DatasetError, StoreConfigError)):
        return 2
    return 1


def read_text_file(path: Path | str, what: str) -> str:
    """The text of a file the user named, decoded as UTF-8 (a leading BOM is dropped).

    A missing or unreadable file, or bytes that are not UTF-8, is an InputError naming ``what``,
    the path and, for bad bytes, the byte, its line and column, and how to convert the file.
    """
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist; check the path") from None
    except IsADirectoryError:
        raise InputError(f"{what} {path} is a folder; pass the path of a file") from None
    except OSError as err:
        raise InputError(f"cannot read {what} {path}: {err.strerror or err}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise InputError(
            f"{what} {path} is not UTF-8 text: byte 0x{data[err.start]:02x} at line {line}, column {column} "
            f"is {err.reason}; save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed`)") from None


__all__ = ["CliError", "InputError", "SpecError", "Interrupted", "exit_code_for", "read_text_file"]
