"""cdissect_common.config: precedence flags > env > file > defaults, typed values, clear errors."""
from __future__ import annotations

import typing
from pathlib import Path

import pytest

from cdissect_common.config import DEFAULTS, ENV_VARS, SERVICE_DEFAULTS, ConfigError, Settings, load_settings


def test_service_defaults_match_the_contract_table() -> None:
    table = {n: (d.port, d.metrics_port, d.health_name) for n, d in SERVICE_DEFAULTS.items()}
    assert table == {"embedder": (50051, 9101, "cdissect.v1.Embedder"),
                     "activations": (50052, 9102, "cdissect.v1.Activations"),
                     "labeler": (50053, 9103, "cdissect.v1.Labeler")}


def test_defaults_apply_per_service(tmp_path: Path) -> None:
    s = load_settings("labeler", env={}, config_file=_missing(tmp_path))
    assert (s.port, s.metrics_port, s.health_name) == (50053, 9103, "cdissect.v1.Labeler")
    assert s.store == "file://~/.cache/cdissect/store"
    assert s.embedder == () and s.sources["store"] == "default"


def _missing(tmp_path: Path) -> Path:
    path = tmp_path / "absent.yaml"
    path.write_text("")
    return path


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("port: 1111\nbatch_size: 7\nstore: s3://from-file\nembedder: [a:1, b:2]\n")
    env = {ENV_VARS["port"]: "2222", ENV_VARS["store"]: "file:///env"}
    s = load_settings("embedder", overrides={"port": 3333, "store": None}, env=env, config_file=cfg)
    assert s.port == 3333 and s.sources["port"] == "flag"
    assert s.store == "file:///env" and s.sources["store"] == "env"
    assert s.batch_size == 7 and s.sources["batch_size"] == "file"
    assert s.embedder == ("a:1", "b:2")


def test_config_file_from_env_var_and_comma_lists(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("s3-secure: yes\n")
    s = load_settings(None, env={"CDISSECT_CONFIG": str(cfg), "CDISSECT_ACTIVATIONS": "x:1, y:2,"})
    assert s.s3_secure is True and s.activations == ("x:1", "y:2") and s.config_file == str(cfg)


@pytest.mark.parametrize("env,needle", [
    ({"CDISSECT_PORT": "abc"}, r"port \(from CDISSECT_PORT\) must be an integer"),
    ({"CDISSECT_DEVICE": "tpu"}, "device"),
    ({"CDISSECT_S3_SECURE": "maybe"}, "true or false"),
    ({"CDISSECT_BATCH_SIZE": "-1"}, "must be positive"),
    ({"CDISSECT_TLS_CERT": "/c.pem"}, "TLS needs both"),
    ({"CDISSECT_CONFIG": "/nonexistent/x.yaml"}, "does not exist"),
    ({"CDISSECT_MAX_INFLIGHT_RPCS": "8", "CDISSECT_MAX_WORKERS": "8"},
     "CDISSECT_MAX_INFLIGHT_RPCS=8 must be below CDISSECT_MAX_WORKERS=8.*raise CDISSECT_MAX_WORKERS"),
])
def test_bad_values_name_the_setting(env: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_settings("embedder", env=env, config_file=None)


@pytest.mark.parametrize("service", ["labeler", "activations", "embedder", None])
def test_few_workers_are_fine_where_only_shard_calls_are_capped(service: str | None) -> None:
    """load_settings checks only max_inflight_rpcs < max_workers: the inline cap counts only in a
    server with inline methods (cdissect_common.server checks that). Before, 8 threads stopped the
    labeler because of the embedder's 48 inline slots."""
    s = load_settings(service, env={"CDISSECT_MAX_WORKERS": "8"}, config_file=None)
    assert (s.max_workers, s.max_inflight_rpcs, s.max_inflight_inline) == (8, 4, 48)


def test_unknown_file_key_and_service_rejected(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("prot: 1\n")
    with pytest.raises(ConfigError, match="unknown setting.*prot"):
        load_settings("embedder", env={}, config_file=cfg)
    with pytest.raises(ConfigError, match="use one of embedder, activations, labeler"):
        load_settings("embeder", env={})


def test_token_from_file(tmp_path: Path) -> None:
    tok = tmp_path / "token"
    tok.write_text("s3cret\n")
    s = load_settings("embedder", env={"CDISSECT_AUTH_TOKEN_FILE": str(tok)}, config_file=_missing(tmp_path))
    assert s.token() == "s3cret"
    s2 = s.replace(auth_token_file=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="cannot read the auth token file"):
        s2.token()


_SAMPLE_BY_TYPE = {int: ("5", 5), float: ("2.5", 2.5), bool: ("yes", True), str: ("cpu", "cpu"),
                   tuple[str, ...]: ("a:1, b:2", ("a:1", "b:2"))}


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_every_setting_reads_its_env_var_with_the_field_type(name: str) -> None:
    """Settings is the one table: a field is a setting with env var CDISSECT_<NAME>, typed by its annotation."""
    kind = typing.get_type_hints(Settings)[name]
    raw, expected = _SAMPLE_BY_TYPE[kind]
    assert ENV_VARS[name] == "CDISSECT_" + name.upper()
    env = {ENV_VARS["tls_cert"]: "x", ENV_VARS["tls_key"]: "x"} if name.startswith("tls_") else {}
    s = load_settings(None, env={**env, ENV_VARS[name]: raw}, config_file="/dev/null")
    assert getattr(s, name) == expected and s.sources[name] == "env"
    assert DEFAULTS[name] == getattr(Settings(), name)


def test_explicit_port_zero_is_kept_for_a_service() -> None:
    """Only an unset port falls back to the service's fixed port; 0 (a free port) is a real choice."""
    s = load_settings("labeler", env={"CDISSECT_PORT": "0"}, config_file="/dev/null")
    assert (s.port, s.metrics_port) == (0, 9103)
