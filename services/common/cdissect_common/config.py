"""The one configuration loader of cdissect, shared by the three services and the CLI.

Precedence, highest first: explicit overrides (CLI flags) > ``CDISSECT_*`` environment >
YAML config file (``CDISSECT_CONFIG`` or ``~/.config/cdissect/config.yaml``) > defaults.

Every setting is one field of ``Settings`` (name, type, default, checks); its environment
variable is ``CDISSECT_<NAME>``. ``DEFAULTS`` and ``ENV_VARS`` are derived from the class;
``SERVICE_DEFAULTS`` holds each service's ports and health name. The Kubernetes manifests are
checked against them.
"""
from __future__ import annotations

import dataclasses
import os
import typing
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
CONFIG_ENV_VAR = "CDISSECT_CONFIG"
ENV_PREFIX = "CDISSECT_"


def _setting(default: Any, *, positive: bool = False, choices: tuple[str, ...] = ()) -> Any:
    """A field of ``Settings`` that is a setting: its env variable is ``CDISSECT_<NAME>``, its
    type the field's annotation; ``positive`` rejects 0, ``choices`` lists the valid strings."""
    return field(default=default, metadata={"setting": True, "positive": positive, "choices": choices})


@dataclass(frozen=True)
class Settings:
    """Resolved configuration of one process (a service or the CLI).

    This class is the one table of settings: each ``_setting`` field gives the setting's name,
    type (int, float, bool, str or a comma list ``tuple[str, ...]``), default and checks; its
    environment variable is ``CDISSECT_`` + the upper-cased name (``DEFAULTS``, ``ENV_VARS``
    below are derived from it).
    """

    service: str | None = None
    host: str = _setting("0.0.0.0")
    port: int = _setting(0)  # left at the default: the service's port from SERVICE_DEFAULTS
    metrics_port: int = _setting(0)  # likewise
    store: str = _setting("file://~/.cache/cdissect/store")
    s3_endpoint: str = _setting("")
    s3_access_key: str = _setting("")
    s3_secret_key: str = _setting("")
    s3_secure: bool = _setting(False)
    s3_region: str = _setting("")
    auth_token: str = _setting("")
    auth_token_file: str = _setting("")
    tls_cert: str = _setting("")
    tls_key: str = _setting("")
    tls_ca: str = _setting("")
    device: str = _setting("auto", choices=("auto", "cpu", "cuda"))
    model: str = _setting("")
    batch_size: int = _setting(0)  # images per forward pass; 0: per device type (devices.DEFAULT_BATCH_SIZES)
    # Images with more pixels are refused by name before decoding (0 = no limit). The default is
    # PIL's own decompression-bomb threshold: about 0.25 GiB once decoded to RGB.
    max_image_pixels: int = _setting(89_478_485)
    max_message_bytes: int = _setting(64 * 1024 * 1024, positive=True)
    cache_dir: str = _setting("~/.cache/cdissect/weights")
    data_dir: str = _setting("~/.cache/cdissect/data")
    download_timeout: float = _setting(20.0, positive=True)
    shutdown_grace_seconds: float = _setting(120.0)
    # gRPC handler threads: enough for max_inflight_rpcs shard calls, max_inflight_inline inline
    # calls (which wait for batch-mates; the embedder only) and the health checks.
    max_workers: int = _setting(64, positive=True)
    # Shard (work) RPCs a service runs at once (more are answered "busy"); below max_workers (with
    # max_inflight_inline, in a service with inline methods), so threads stay free for health checks.
    max_inflight_rpcs: int = _setting(4, positive=True)
    # Inline RPCs (EmbedTexts/EmbedImages) a service holds at once, batched together (more: "busy").
    max_inflight_inline: int = _setting(48, positive=True)
    prefetch_workers: int = _setting(0)  # threads decoding and preprocessing the next images; 0: the cores available
    prefetch_depth: int = _setting(2, positive=True)  # prepared batches waiting for the device
    inline_batch_max: int = _setting(0)  # most images/texts in one server-side batch of inline calls; 0: batch_size
    inline_batch_wait_seconds: float = _setting(0.005)  # how long a lone inline call waits for others to batch with
    # Seconds a call failing with a transient error (service or store unreachable) is retried,
    # counted from the failure.
    retry_timeout: float = _setting(90.0)
    # Set by the CLI on the services it starts for one command: they stop when that process exits.
    parent_pid: int = _setting(0)
    # Operator-configured folders whose checkpoint files requests may name by server path.
    model_dirs: tuple[str, ...] = _setting(())
    # Models a service keeps loaded at once; the least recently used one is dropped first.
    max_loaded_models: int = _setting(2, positive=True)
    embedder: tuple[str, ...] = _setting(())
    activations: tuple[str, ...] = _setting(())
    labeler: tuple[str, ...] = _setting(())
    runs_dir: str = _setting("runs")
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


_FIELDS = {f.name: f for f in dataclasses.fields(Settings) if f.metadata.get("setting")}
_TYPES: dict[str, Any] = {name: hint for name, hint in typing.get_type_hints(Settings).items() if name in _FIELDS}
# Derived from Settings, for code that needs one setting's default or env variable by name.
DEFAULTS: dict[str, Any] = {name: f.default for name, f in _FIELDS.items()}
ENV_VARS: dict[str, str] = {name: ENV_PREFIX + name.upper() for name in _FIELDS}


def service_defaults(service: str) -> ServiceDefaults:
    """The fixed defaults of a service by name; unknown names list the valid ones."""
    try:
        return SERVICE_DEFAULTS[service]
    except KeyError:
        raise ConfigError(f"unknown service {service!r}; use one of {', '.join(SERVICE_DEFAULTS)}") from None


def _coerce(key: str, value: Any, source: str) -> Any:
    """Turn a raw value (env string, YAML scalar, flag) into the setting's type, or explain."""
    if key not in _FIELDS:
        raise ConfigError(f"unknown setting {key!r} in {source}; valid settings: {', '.join(sorted(DEFAULTS))}")
    where = f"{key} (from {source})"
    if value is None:
        return DEFAULTS[key]
    kind, meta = _TYPES[key], _FIELDS[key].metadata
    if kind is int:
        try:
            number = int(str(value).strip())
        except ValueError:
            raise ConfigError(f"{where} must be an integer, got {value!r}") from None
        if number < 0 or (meta["positive"] and number == 0):
            raise ConfigError(f"{where} must be positive, got {number}")
        return number
    if kind is float:
        try:
            number = float(str(value).strip())
        except ValueError:
            raise ConfigError(f"{where} must be a number of seconds, got {value!r}") from None
        if number < 0 or (meta["positive"] and number == 0):
            raise ConfigError(f"{where} must be {'positive' if meta['positive'] else '>= 0'}, got {number}")
        return number
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off", ""}:
            return False
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if kind == tuple[str, ...]:
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(str(v).strip() for v in items if str(v).strip())
    text = str(value).strip()
    if meta["choices"] and text not in meta["choices"]:
        raise ConfigError(f"{where} must be one of {', '.join(sorted(meta['choices']))}, got {text!r}")
    return text


def _read_config_file(path: Path, explicit: bool) -> dict[str, Any]:
    """Settings from a YAML mapping; a missing default file is fine, a missing named one is not."""
    if not path.exists():
        if explicit:
            raise ConfigError(f"config file {path} (from {CONFIG_ENV_VAR}) does not exist; create it or unset "
                              f"{CONFIG_ENV_VAR}")
        return {}
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                          f"{exc.start} is {exc.reason}); save it as UTF-8") from None
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
        elif from_file.get(key) is not None:
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
        if sources["port"] == "default":
            values["port"] = fixed.port
        if sources["metrics_port"] == "default":
            values["metrics_port"] = fixed.metrics_port
    # Inline calls have their own cap, counted against the threads only where a service has inline
    # methods: cdissect_common.server checks that, once its registrations are known.
    if values["max_inflight_rpcs"] >= values["max_workers"]:
        raise ConfigError(f"{ENV_VARS['max_inflight_rpcs']}={values['max_inflight_rpcs']} must be below "
                          f"{ENV_VARS['max_workers']}={values['max_workers']}: the threads left over answer health "
                          f"checks while every work slot is busy; raise {ENV_VARS['max_workers']} or lower the cap")
    if bool(values["tls_cert"]) != bool(values["tls_key"]):
        raise ConfigError(f"TLS needs both {ENV_VARS['tls_cert']} and {ENV_VARS['tls_key']}; set both or neither")
    return Settings(service=service, config_file=str(path) if path.exists() else "", sources=sources, **values)
