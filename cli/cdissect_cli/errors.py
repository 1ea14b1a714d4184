"""The one exception type the CLI shows to users: a message that names the problem and the fix.

Every command catches `CliError` at the top (see `app.main`) and prints its message without a
traceback, then exits with `exit_code`. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class CliError(Exception):
    """A user-facing failure: `str(err)` is the complete message (problem, then the fix)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class SpecError(CliError):
    """The job spec (flags or YAML) is invalid; exit code 2 like other usage errors."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)


class Interrupted(BaseException):
    """SIGINT/SIGTERM arrived. A BaseException, so no `except Exception` (health polling, retries)
    can swallow it on its way to `app.main`, which stops local services and exits 128+signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}; finished artifacts are kept: rerun the same command "
                         f"to resume")
        self.exit_code = 128 + signum
