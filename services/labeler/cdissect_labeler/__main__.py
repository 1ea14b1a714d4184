"""`python -m cdissect_labeler`: run the labeler service with settings from env/config (cdissect_common.config)."""
from __future__ import annotations

import sys
from collections.abc import Callable

from cdissect_common.server import Registration, ServiceRuntime, run_service


def build(runtime: ServiceRuntime) -> tuple[list[Registration], Callable[[], None]]:
    """Servicers and warm-up of the labeler service (imported here so start-up errors show in the log)."""
    from cdissect_labeler.service import registrations

    regs, servicer = registrations(runtime)
    return regs, servicer.warmup


def main() -> int:
    """Entry point of the service process."""
    return run_service("labeler", build)


if __name__ == "__main__":
    sys.exit(main())
