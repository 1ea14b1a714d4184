"""`python -m cdissect_embedder`: run the embedder service with settings from env/config (cdissect_common.config)."""
from __future__ import annotations

import sys
from collections.abc import Callable

from cdissect_common.server import Registration, ServiceRuntime, run_service


def build(runtime: ServiceRuntime) -> tuple[list[Registration], Callable[[], None]]:
    """Servicers and warm-up of the embedder (imported here so --help stays fast)."""
    from cdissect_embedder.service import registrations

    regs, servicer = registrations(runtime)
    return regs, servicer.warmup


def main() -> int:
    """Entry point of the service process."""
    return run_service("embedder", build)


if __name__ == "__main__":
    sys.exit(main())
