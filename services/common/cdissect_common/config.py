"""The one configuration loader of cdissect, shared by the three services and the CLI.

Precedence, highest first: explicit overrides (CLI flags) > ``CDISSECT_*`` environment >
YAML config file (``CDISSECT_CONFIG`` or ``~/.config/cdissect/config.yaml``) > defaults.

Every default (ports, metrics ports, health service names, store URL, limits) lives in this
file once: ``SERVICE_DEFAULTS`` per service, ``DEFAULTS`` for the rest, ``ENV_VARS`` for the
environment variable of every setting. The Kubernetes manifests are checked against them.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message names the setting and the fix."""


@dataclass(frozen=True)
class ServiceDefaults:
    """Fixed identity and default ports of one deployable service."""

    name: str
    module: str
    port: int
    metrics_port: int
    health_name: str


SERVICE_DEFAULTS: dict[str, ServiceDefaults] = {
    "embedder": ServiceDefaults("embedder", "cdissect_embedder", 50051, 9101, "cdissect.v1.Embedder"),
    "activations": ServiceDefaults("activations", "cdissect_activations", 50052, 9102,
                                   "cdissect.v1.Activations"),
    "labeler": ServiceDefaults("labeler", "cdissect_labeler", 50053, 9103, "cdissect.v1.Labeler"),
}

DEFAULT_CONFIG_FILE = "~/.config/cdissect/config.yaml"

# Settings that are not per-service. ``port``/``metrics_port`` default per service (above).
DEFAULTS: dict[str, Any] = {
    "host": "0.0.0.0",
    "port": None,
    "metrics_port": None,
    "store": "file://~/.cache/cdissect/store",
    "s3_endpoint": "",
    "s3_access_key": "",
    "s3_secret_key": "",
    "s3_secure": False,
    "s3_region": "",
    "auth_token": "",
    "auth_token_file": "",
    "tls_cert": "",
    "tls_key": "",
    "tls_ca": "",
    "device": "auto",
    "model": "",
    "batch_size": 0,               # images per forward pass; 0: per device type (devices.DEFAULT_BATCH_SIZES)
    "max_message_bytes": 64 * 1024 * 1024,
    "cache_dir": "~/.cache/cdissect/weights",
    "data_dir": "~/.cache/cdissect/data",
    "download_timeout": 20.0,
    "shutdown_grace_seconds": 120.0,
    "max_workers": 64,             # gRPC handler threads (concurrent inline calls batch together)
    "prefetch_workers": 0,         # threads decoding the next images; 0: the cores available
    "prefetch_depth": 2,           # prepared batches waiting for the device
    "inline_batch_max": 0,         # most images/texts in one server-side batch; 0: the batch size
    "inline_batch_wait_ms": 5.0,   # how long a lone inline call waits for others to batch with
    "embedder": (),
    "activations": (),
    "labeler": (),
    "runs_dir": "runs",
}

ENV_VARS: dict[str, str] = {
    "host": "CDISSECT_HOST",
    "port": "CDISSECT_PORT",
    "metrics_port": "CDISSECT_METRICS_PORT",
    "store": "CDISSECT_STORE",
    "s3_endpoint": "CDISSECT_S3_ENDPOINT",
    "s3_access_key": "CDISSECT_S3_ACCESS_KEY",
    "s3_secret_key": "CDISSECT_S3_SECRET_KEY",
    "s3_secure": "CDISSECT_S3_SECURE",
    "s3_region": "CDISSECT_S3_REGION",
    "auth_token": "CDISSECT_AUTH_TOKEN",
    "auth_token_file": "CDISSECT_AUTH_TOKEN_FILE",
    "tls_cert": "CDISSECT_TLS_CERT",
    "tls_key": "CDISSECT_TLS_KEY",
    "tls_ca": "CDISSECT_TLS_CA",
    "device": "CDISSECT_DEVICE",
    "model": "CDISSECT_MODEL",
    "batch_size": "CDISSECT_BATCH_SIZE",
    "max_message_bytes": "CDISSECT_MAX_MESSAGE_BYTES",
    "cache_dir": "CDISSECT_CACHE_DIR",
    "data_dir": "CDISSECT_DATA_DIR",
    "download_timeout": "CDISSECT_DOWNLOAD_TIMEOUT",
    "shutdown_grace_seconds": "CDISSECT_SHUTDOWN_GRACE_SECONDS",
    "max_workers": "CDISSECT_MAX_WORKERS",
    "prefetch_workers": "CDISSECT_PREFETCH_WORKERS",
    "prefetch_depth": "CDISSECT_PREFETCH_DEPTH",
    "inline_batch_max": "CDISSECT_INLINE_BATCH_MAX",
    "inline_batch_wait_ms": "CDISSECT_INLINE_BATCH_WAIT_MS",
    "embedder": "CDISSECT_EMBEDDER",
    "activations": "CDISSECT_ACTIVATIONS",
    "labeler": "CDISSECT_LABELER",
    "runs_dir": "CDISSECT_RUNS_DIR",
}
CONFIG_ENV_VAR = "CDISSECT_CONFIG"

_INT_KEYS = {"port", "metrics_port", "batch_size", "max_message_bytes", "max_workers", "prefetch_workers",
             "prefetch_depth", "inline_batch_max"}
_FLOAT_KEYS = {"shutdown_grace_seconds", "download_timeout", "inline_batch_wait_ms"}
_BOOL_KEYS = {"s3_secure"}
_LIST_KEYS = {"embedder", "activations", "labeler"}
_DEVICES = {"auto", "cpu", "cuda"}


@dataclass(frozen=True)
class Settings:
    """Resolved configuration of one process (a service or the CLI)."""

    service: str | None = None
    host: str = DEFAULTS["host"]
    port: int = 0
    metrics_port: int = 0
    store: str = DEFAULTS["store"]
    s3_endpoint: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_secure: bool = False
    s3_region: str = ""
    auth_token: str = ""
    auth_token_file: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    device: str = "auto"
    model: str = ""
    batch_size: int = DEFAULTS["batch_size"]
    max_message_bytes: int = DEFAULTS["max_message_bytes"]
    cache_dir: str = DEFAULTS["cache_dir"]
    data_dir: str = DEFAULTS["data_dir"]
    download_timeout: float = DEFAULTS["download_timeout"]
    shutdown_grace_seconds: float = DEFAULTS["shutdown_grace_seconds"]
    max_workers: int = DEFAULTS["max_workers"]
    prefetch_workers: int = DEFAULTS["prefetch_workers"]
    prefetch_depth: int = DEFAULTS["prefetch_depth"]
    inline_batch_max: int = DEFAULTS["inline_batch_max"]
    inline_batch_wait_ms: float = DEFAULTS["inline_batch_wait_ms"]
    embedder: tuple[str, ...] = ()
    activations: tuple[str, ...] = ()
    labeler: tuple[str, ...] = ()
    runs_dir: str = DEFAULTS["runs_dir"]
    config_file: str = ""
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def health_name(self) -> str:
        """The grpc.health.v1 service name of this process's service."""
        return service_defaults(self.service).health_name if self.service else ""

    def token(self) -> str:
        """The bearer token: CDISSECT_AUTH_TOKEN, else the content of CDISSECT_AUTH_TOKEN_FILE."""
        if self.auth_token:
            return self.auth_token.strip()
        if self.auth_token_file:
            path = Path(self.auth_token_file).expanduser()
            try:
                return path.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read the auth token file {path} ({ENV_VARS['auth_token_file']}):"
                                  f" {exc.strerror}; point it at a readable file or unset it") from exc
        return ""

    def endpoints(self, service: str) -> tuple[str, ...]:
        """The configured endpoints of a service (empty = embedded local mode)."""
        service_defaults(service)
        return getattr(self, service)

    def replace(self, **changes: Any) -> "Settings":
        """A copy with some settings changed (values are validated like overrides)."""
        clean = {k: _coerce(k, v, "override") for k, v in changes.items()}
        return dataclasses.replace(self, **clean)


def service_defaults(service: str) -> ServiceDefaults:
    """The fixed defaults of a service by name; unknown names list the valid ones."""
    try:
        return SERVICE_DEFAULTS[service]
    except KeyError:
        raise ConfigError(f"unknown service {service!r}; use one of {', '.join(SERVICE_DEFAULTS)}") from None


def _coerce(key: str, value: Any, source: str) -> Any:
    """Turn a raw value (env string, YAML scalar, flag) into the setting's type, or explain."""
    if key not in DEFAULTS:
        raise ConfigError(f"unknown setting {key!r} in {source}; valid settings: {', '.join(sorted(DEFAULTS))}")
    where = f"{key} (from {source})"
    if value is None:
        return DEFAULTS[key]
    if key in _INT_KEYS:
        try:
            number = int(str(value).strip())
        except ValueError:
            raise ConfigError(f"{where} must be an integer, got {value!r}") from None
        if number < 0 or (key in {"max_message_bytes", "max_workers", "prefetch_depth"} and number == 0):
            raise ConfigError(f"{where} must be positive, got {number}")
        return number
    if key in _FLOAT_KEYS:
        try:
            number = float(str(value).strip())
        except ValueError:
            raise ConfigError(f"{where} must be a number of seconds, got {value!r}") from None
        if number < 0 or (key == "download_timeout" and number == 0):
            raise ConfigError(f"{where} must be {'positive' if key == 'download_timeout' else '>= 0'}, got {number}")
        return number
    if key in _BOOL_KEYS:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off", ""}:
            return False
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if key in _LIST_KEYS:
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(str(v).strip() for v in items if str(v).strip())
    text = str(value).strip()
    if key == "device" and text not in _DEVICES:
        raise ConfigError(f"{where} must be one of {', '.join(sorted(_DEVICES))}, got {text!r}")
    return text


def _read_config_file(path: Path, explicit: bool) -> dict[str, Any]:
    """Settings from a YAML mapping; a missing default file is fine, a missing named one is not."""
    if not path.exists():
        if explicit:
            raise ConfigError(f"config file {path} (from {CONFIG_ENV_VAR}) does not exist; create it or unset "
                              f"{CONFIG_ENV_VAR}")
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of setting: value, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def load_settings(service: str | None = None, overrides: Mapping[str, Any] | None = None,
                  env: Mapping[str, str] | None = None, config_file: str | Path | None = None) -> Settings:
    """Resolve the settings of a service (or of the CLI when ``service`` is None).

    ``overrides`` are CLI flags (None values are ignored, so unset flags fall through);
    ``env`` defaults to ``os.environ``; ``config_file`` defaults to ``CDISSECT_CONFIG`` or
    the per-user file.
    """
    env = os.environ if env is None else env
    if service is not None:
        service_defaults(service)
    explicit = config_file is not None or bool(env.get(CONFIG_ENV_VAR))
    path = Path(config_file or env.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_FILE).expanduser()
    from_file = _read_config_file(path, explicit)

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in DEFAULTS:
        if overrides and overrides.get(key) is not None:
            values[key], sources[key] = _coerce(key, overrides[key], "flag"), "flag"
        elif env.get(ENV_VARS[key]) not in (None, ""):
            values[key], sources[key] = _coerce(key, env[ENV_VARS[key]], ENV_VARS[key]), "env"
        elif key in from_file:
            values[key], sources[key] = _coerce(key, from_file[key], str(path)), "file"
        else:
            values[key], sources[key] = DEFAULTS[key], "default"
    unknown = set(from_file) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(sorted(unknown))} in {path}; valid settings: "
                          f"{', '.join(sorted(DEFAULTS))}")
    if overrides:
        bad = set(k for k, v in overrides.items() if v is not None) - set(DEFAULTS)
        if bad:
            raise ConfigError(f"unknown setting(s) {', '.join(sorted(bad))}; valid: {', '.join(sorted(DEFAULTS))}")
    if service is not None:
        fixed = SERVICE_DEFAULTS[service]
        values["port"] = fixed.port if values["port"] is None else values["port"]
        values["metrics_port"] = fixed.metrics_port if values["metrics_port"] is None else values["metrics_port"]
    else:
        values["port"] = values["port"] or 0
        values["metrics_port"] = values["metrics_port"] or 0
    if bool(values["tls_cert"]) != bool(values["tls_key"]):
        raise ConfigError(f"TLS needs both {ENV_VARS['tls_cert']} and {ENV_VARS['tls_key']}; set both or neither")
    return Settings(service=service, config_file=str(path) if path.exists() else "", sources=sources, **values)
