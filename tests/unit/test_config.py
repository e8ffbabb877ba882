"""Config: defaults, TOML, environment, validation errors, secret masking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.config import MASK, load_settings
from tests.conftest import run_cli


def test_defaults_are_loopback_stack() -> None:
    s = load_settings(environ={})
    assert s.kafka.bootstrap_servers == "127.0.0.1:19092"
    assert s.redis.url == "redis://127.0.0.1:16379/0"
    assert s.backend == "auto"
    assert s.stack.kafka_heap_mb == 512


def test_toml_then_env_precedence(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('backend = "cpu"\n[kafka]\nbootstrap_servers = "h1:1,h2:2"\n[stack]\nkafka_port = 29092\n'
                 '[kafka.security]\n"security.protocol" = "SASL_SSL"\n"sasl.password" = "hunter2"\n')
    s = load_settings(f, environ={"MYSTOCKS_STACK__KAFKA_PORT": "39092", "MYSTOCKS_KAFKA__SECURITY__SASL_USERNAME": "bob"})
    assert s.backend == "cpu"
    assert s.kafka.bootstrap_servers == "h1:1,h2:2"
    assert s.stack.kafka_port == 39092  # env wins over file, and is coerced to int
    assert dict(s.kafka.security) == {"security.protocol": "SASL_SSL", "sasl.password": "hunter2", "sasl.username": "bob"}
    conf = s.kafka.client_config()
    assert conf["sasl.password"] == "hunter2" and conf["bootstrap.servers"] == "h1:1,h2:2"


def test_masking_hides_every_secret(tmp_path: Path) -> None:
    s = load_settings(environ={"MYSTOCKS_KAFKA__SECURITY__SASL_PASSWORD": "hunter2",
                               "MYSTOCKS_REDIS__URL": "redis://u:pw123@h:6379/0",
                               "MYSTOCKS_SCHEMA_REGISTRY__BASIC_AUTH_PASSWORD": "s3cret"})
    text = json.dumps(s.masked())
    for secret in ("hunter2", "pw123", "s3cret"):
        assert secret not in text
    assert s.masked()["kafka"]["security"]["sasl.password"] == MASK
    assert s.masked()["redis"]["url"] == f"redis://u:{MASK}@h:6379/0"


@pytest.mark.parametrize("env, fragment", [
    ({"MYSTOCKS_KAFKA__NOPE": "1"}, "unknown key(s) in [kafka]: nope"),
    ({"MYSTOCKS_NOPE__X": "1"}, "unknown config section(s): nope"),
    ({"MYSTOCKS_FOO": "1"}, "unknown environment variable MYSTOCKS_FOO"),
    ({"MYSTOCKS_STACK__KAFKA_PORT": "abc"}, "stack.kafka_port: expected int"),
    ({"MYSTOCKS_STACK__KAFKA_PORT": "70000"}, "must be a TCP port"),
    ({"MYSTOCKS_BACKEND": "tpu"}, "backend must be auto, cpu or gpu"),
    ({"MYSTOCKS_KAFKA__BOOTSTRAP_SERVERS": "nohostport"}, "host:port"),
    ({"MYSTOCKS_KAFKA__SECURITY__SECURITY_PROTOCOL": "TLS"}, "security.protocol must be one of"),
    ({"MYSTOCKS_LOG__FORMAT": "xml"}, "log.format"),
    ({"MYSTOCKS_REDIS__URL": "http://x"}, "redis.url"),
])
def test_bad_config_is_a_clear_error(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(environ=env)
    assert fragment in str(exc.value)


def test_bad_toml_file(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[kafka\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(f, environ={})
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_cli_config_show_masks_and_rejects_unknown() -> None:
    r = run_cli("config", "show", env={"MYSTOCKS_KAFKA__SECURITY__SASL_PASSWORD": "hunter2"})
    assert r.returncode == 0, r.stderr
    assert "hunter2" not in r.stdout and MASK in r.stdout
    assert json.loads(r.stdout)["kafka"]["bootstrap_servers"] == load_settings().kafka.bootstrap_servers
    r = run_cli("config", "show", env={"MYSTOCKS_KAFKA__NOPE": "1"})
    assert r.returncode == 2 and "unknown key(s) in [kafka]: nope" in r.stderr


@pytest.mark.parametrize("argv, env, rc", [
    (["config", "show"], {"MYSTOCKS_KAFKA__SECURITY__SASL_PASSWORD": "hunter2"}, 0),
    # an unreachable broker: librdkafka's connection errors and the CLI's error line are logged too
    (["topics", "create"], {"MYSTOCKS_KAFKA__SECURITY__SASL_PASSWORD": "hunter2",
                            "MYSTOCKS_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1", "MYSTOCKS_KAFKA__CONNECT_TIMEOUT_S": "3"}, 1),
])
def test_json_logs_are_one_object_per_line(argv: list[str], env: dict[str, str], rc: int) -> None:
    r = run_cli("--log-format", "json", "--log-level", "DEBUG", *argv, env=env)
    assert r.returncode == rc, r.stderr
    lines = r.stderr.splitlines()
    assert lines, "no log lines"
    for ln in lines:  # every line, not only those that look like JSON
        obj = json.loads(ln)
        assert isinstance(obj, dict) and {"ts", "level", "logger", "msg"} <= set(obj), ln
    assert "hunter2" not in r.stderr
    if rc:
        last = json.loads(lines[-1])
        assert last["level"] == "ERROR" and last["msg"].startswith("mystocks-gpu: error: no Kafka broker answered")
        assert last["exit_code"] == rc
