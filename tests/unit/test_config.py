"""Config: defaults, TOML, environment, validation errors, secret masking."""

from __future__ import annotations

import json
import os
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
    assert s.stack.kafka_heap_mb == 1024 and s.stack.kafka_young_mb == 640


def test_rebootstrap_s_reaches_every_kafka_client_config(tmp_path: Path) -> None:
    """``kafka.rebootstrap_s`` is librdkafka's ``metadata.recovery.rebootstrap.trigger.ms`` in every
    client we build (producer, consumer, admin all start from ``client_config``); 10 s by default
    (librdkafka's own is 300 s), from TOML and the environment."""
    from confluent_kafka import Producer

    from mystocks_gpu.infra.kafka_clients import _base

    default = load_settings(environ={}).kafka
    assert default.rebootstrap_s == 10.0
    assert default.client_config()["metadata.recovery.rebootstrap.trigger.ms"] == 10_000
    assert default.client_config()["metadata.recovery.strategy"] == "rebootstrap"
    f = tmp_path / "c.toml"
    f.write_text("[kafka]\nrebootstrap_s = 2.5\n")
    assert _base(load_settings(f, environ={}).kafka, {})["metadata.recovery.rebootstrap.trigger.ms"] == 2_500
    env = load_settings(f, environ={"MYSTOCKS_KAFKA__REBOOTSTRAP_S": "0.25"}).kafka
    assert env.client_config()["metadata.recovery.rebootstrap.trigger.ms"] == 250
    Producer(env.client_config())  # librdkafka takes the property (an unknown one raises KafkaException)


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
    ({"MYSTOCKS_STACK__KAFKA_PORT": "abc"}, "stack.kafka_port: expected an integer"),
    ({"MYSTOCKS_STACK__KAFKA_PORT": "1.5"}, "stack.kafka_port: expected an integer"),
    ({"MYSTOCKS_KAFKA__CONNECT_TIMEOUT_S": "nan"}, "kafka.connect_timeout_s: must be a finite number"),
    ({"MYSTOCKS_JOBS__WEB_PORT": "x"}, "jobs.web_port: expected an integer"),
    ({"MYSTOCKS_JOBS__NOPE": "1"}, "unknown key(s) in [jobs]: nope"),
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


# ---- config errors a user can act on: one line naming the key, exit code 2, no traceback ------------
BAD_FILES = [
    ("[log]\nlevel = 5\n", "log.level"),
    ("[redis]\nurl = 5\n", "redis.url"),
    ("[stack]\nkafka_port = 1.5\n", "stack.kafka_port"),
    ("[stack]\nkafka_heap_mb = \"512\"\n", "stack.kafka_heap_mb"),
    ("[stack]\nkafka_young_mb = 800\n", "stack.kafka_young_mb"),  # leaves the old generation < 256 MB
    ("[stack]\nkafka_heap_mb = 512\n", "stack.kafka_young_mb"),  # the default young generation no longer fits
    ("[stack]\nkafka_young_mb = 8\n", "stack.kafka_young_mb"),
    ("[stack]\nstartup_timeout_s = -5\n", "stack.startup_timeout_s"),
    ("[metrics]\nport = true\n", "metrics.port"),
    ("[metrics]\nport = -1\n", "metrics.port"),
    ("[kafka]\nconnect_timeout_s = nan\n", "kafka.connect_timeout_s"),
    ("[kafka]\nconnect_timeout_s = inf\n", "kafka.connect_timeout_s"),
    ("[kafka]\nconnect_timeout_s = -1\n", "kafka.connect_timeout_s"),
    ("[kafka]\nconnect_timeout_s = 0\n", "kafka.connect_timeout_s"),
    ("[kafka]\nrebootstrap_s = 0\n", "kafka.rebootstrap_s"),
    ("[kafka]\nrebootstrap_s = 1e9\n", "kafka.rebootstrap_s"),
    ("[kafka]\nrebootstrap_s = inf\n", "kafka.rebootstrap_s"),
    ("[kafka]\nbootstrap_servers = 9092\n", "kafka.bootstrap_servers"),
    ("[kafka.security]\n\"sasl.password\" = [\"x\"]\n", "kafka.security.sasl.password"),
    ("[schema_registry]\ntimeout_s = 0\n", "schema_registry.timeout_s"),
    ("[schema_registry]\nregister = \"yes\"\n", "schema_registry.register"),
    ("[schema_registry]\nurl = 5\n", "schema_registry.url"),
    ("backend = 5\n", "backend"),
    ("kafka = 5\n", "[kafka]"),
    ("[jobs]\nweb_port = 70000\n", "jobs.web_port"),
    ("[jobs]\nheartbeat_ttl_s = nan\n", "jobs.heartbeat_ttl_s"),
    ("[jobs]\nheartbeat_interval_s = 2.0\nheartbeat_ttl_s = 1.0\n", "jobs.heartbeat_ttl_s"),
    ("[jobs]\ntick_interval_s = 0\n", "jobs.tick_interval_s"),
    ("[jobs]\nmemory_headroom = 0.95\n", "jobs.memory_headroom"),
    ("[jobs]\ngpu_utilization_alert = 1.5\n", "jobs.gpu_utilization_alert"),
    ("[jobs]\nnamespace = \"a:b\"\n", "jobs.namespace"),
    ("[jobs]\ncommands_topic = \"bad topic\"\n", "jobs.commands_topic"),
    ("[jobs]\nmax_chunks_per_device = 2.5\n", "jobs.max_chunks_per_device"),
]


@pytest.mark.parametrize("text, key", BAD_FILES, ids=[k + ":" + t.split("=")[-1].strip() for t, k in BAD_FILES])
def test_config_show_rejects_bad_file_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch, text: str, key: str) -> None:
    from mystocks_gpu.cli.main import main

    for name in [n for n in os.environ if n.startswith("MYSTOCKS_")]:  # the file alone decides
        monkeypatch.delenv(name)
    f = tmp_path / "bad.toml"
    f.write_text(text)
    code = main(["--config", str(f), "config", "show"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("mystocks-gpu: error: ") and "\n" not in err, err
    assert key in err, err


def test_config_show_bad_type_no_traceback_in_a_real_process(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[log]\nlevel = 5\n")
    r = run_cli("--config", str(f), "config", "show")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "mystocks-gpu: error: log.level: expected a string, got 5"


def test_jobs_section_layers_toml_env_and_cli_flags(tmp_path: Path) -> None:
    import argparse

    from mystocks_gpu.cli.jobs_common import control_url, jobs_config

    f = tmp_path / "jobs.toml"
    f.write_text('[jobs]\nnamespace = "nsfile"\nweb_port = 7001\nheartbeat_ttl_s = 9\nmemory_headroom = 0.2\n')
    s = load_settings(f, environ={"MYSTOCKS_JOBS__WEB_PORT": "7002"})
    assert (s.jobs.namespace, s.jobs.web_port, s.jobs.heartbeat_ttl_s) == ("nsfile", 7002, 9.0)
    assert s.jobs.scheduler().memory_headroom == 0.2
    args = argparse.Namespace(namespace="nscli", heartbeat_ttl=None, heartbeat_interval=None, url=None)
    cfg = jobs_config(args, s, web_port=None)
    assert (cfg.namespace, cfg.web_port, cfg.heartbeat_ttl_s) == ("nscli", 7002, 9.0)
    assert control_url(args, s) == "http://127.0.0.1:7002"
    with pytest.raises(ConfigError, match="jobs.heartbeat_ttl_s"):  # a CLI flag is validated like the file
        jobs_config(argparse.Namespace(namespace=None, heartbeat_ttl=0.5, heartbeat_interval=None), s)
    r = run_cli("--config", str(f), "config", "show")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["jobs"]["namespace"] == "nsfile"
