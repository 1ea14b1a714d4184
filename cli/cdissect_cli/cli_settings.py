"""The CLI's configuration: the common loader (flags > CDISSECT_* env > config file > defaults).

The CLI adds no loader of its own; it only turns its flags into overrides for
`cdissect_common.config.load_settings`, expands `~` in a filesystem store URL (child service
processes must see the same absolute folder), and knows where local-mode files live.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cdissect_common.config import ConfigError, Settings, load_settings

from cdissect_cli.errors import InputError


def load_cli_settings(config_file: Path | None = None, **flags: Any) -> Settings:
    """Resolve the CLI's settings; flags left as None fall through to env, file and defaults."""
    try:
        settings = load_settings(None, overrides=flags, config_file=config_file)
    except ConfigError as err:
        raise InputError(str(err)) from err
    return settings.replace(store=expand_store_url(settings.store))


def expand_store_url(url: str) -> str:
    """`file://~/x` or `file://relative` → `file:///absolute/x`; other URLs unchanged."""
    if url.startswith("file://"):
        path = url[len("file://"):]
        return "file://" + str(Path(path).expanduser().resolve())
    if "://" not in url and url:
        raise InputError(f"store URL {url!r} has no scheme: use file:///absolute/folder or s3://bucket "
                         f"(--store or CDISSECT_STORE)")
    return url


def cdissect_home() -> Path:
    """Folder of local-mode files (state file, service logs): $XDG_CACHE_HOME/cdissect or ~/.cache/cdissect."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base) / "cdissect"


def service_env(settings: Settings) -> dict[str, str]:
    """Settings the CLI resolved that local service processes must share (store, S3, auth)."""
    env = {
        "CDISSECT_STORE": settings.store,
        "CDISSECT_S3_ENDPOINT": settings.s3_endpoint,
        "CDISSECT_S3_ACCESS_KEY": settings.s3_access_key,
        "CDISSECT_S3_SECRET_KEY": settings.s3_secret_key,
        "CDISSECT_S3_SECURE": "true" if settings.s3_secure else "false",
        "CDISSECT_S3_REGION": settings.s3_region,
        "CDISSECT_AUTH_TOKEN": settings.auth_token,
        "CDISSECT_AUTH_TOKEN_FILE": settings.auth_token_file,
        "CDISSECT_DEVICE": settings.device,
        # The CLI's retry budget is also its local services' budget for the store, so a store
        # outage is reported within the budget the user chose.
        "CDISSECT_RETRY_TIMEOUT": f"{settings.retry_timeout:g}",
    }
    return {k: v for k, v in env.items() if v}
