"""Operating parts without servers: the [services] settings, `stack up --with` parsing, connector
configs (placeholders, secrets by reference, primary keys that exist in the topics' Avro schemas),
log context fields, GPU gauges, jobs-by-kind gauges, and the pid ownership of optional servers."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.config import load_settings
from mystocks_gpu.infra.connect_client import (
    CONNECTORS_DIR,
    ConnectError,
    connector_config,
    known_connectors,
)
from mystocks_gpu.infra.devices import Device, parse_fake_inventory
from mystocks_gpu.infra.gpu_metrics import register_gpu_metrics
from mystocks_gpu.infra.logs import JsonFormatter, TextFormatter, log_context, set_process_fields
from mystocks_gpu.infra.services_config import ServicesConfig, parse_with
from mystocks_gpu.infra.stack_process import ManagedServer, process_start_time
from mystocks_gpu.topics.catalog import get


def test_services_settings_from_env_validated_and_masked() -> None:
    s = load_settings(environ={"MYSTOCKS_SERVICES__CONNECT_PORT": "21083", "MYSTOCKS_SERVICES__POSTGRES_PASSWORD": "s3cret",
                               "MYSTOCKS_STACK__HOST": "127.0.0.2"})
    assert s.services.connect_rest(s.stack.host) == "http://127.0.0.2:21083"
    assert s.masked()["services"]["postgres_password"] == "***"
    assert "s3cret" not in json.dumps(s.masked())
    for bad in ({"MYSTOCKS_SERVICES__PROMETHEUS_PORT": "0"}, {"MYSTOCKS_SERVICES__CONNECT_PORT": "15432"},
                {"MYSTOCKS_SERVICES__POSTGRES_DB": "My-DB"}, {"MYSTOCKS_SERVICES__SCRAPE_TARGETS": "host-without-port"},
                {"MYSTOCKS_SERVICES__CONNECT_URL": "ftp://x"}, {"MYSTOCKS_SERVICES__NOPE": "1"}):
        with pytest.raises(ConfigError):
            load_settings(environ=bad)
    assert ServicesConfig(scrape_targets="a:1, b:2").targets() == ["a:1", "b:2"]


def test_with_components() -> None:
    assert parse_with("connect") == ("postgres", "connect")  # the sinks' database comes along
    assert parse_with("prometheus,postgres") == ("postgres", "prometheus")
    with pytest.raises(ConfigError, match="known: postgres, connect, prometheus"):
        parse_with("grafana")


def _avro_fields(schema_name: str) -> set[str]:
    from mystocks_gpu.schemas import schema_store

    return {f["name"] for f in schema_store(load_settings(environ={})).by_name(schema_name).raw["fields"]}


@pytest.mark.parametrize("name", known_connectors())
def test_connector_configs_upsert_on_fields_of_their_topic(name: str) -> None:
    cfg = connector_config(name, load_settings(environ={"MYSTOCKS_SERVICES__POSTGRES_PORT": "25432",
                                                        "MYSTOCKS_STACK__HOME": "/srv/stack"}))
    assert cfg["connector.class"] == "io.debezium.connector.jdbc.JdbcSinkConnector"
    assert cfg["insert.mode"] == "upsert" and cfg["primary.key.mode"] == "record_value"
    assert cfg["connection.url"] == "jdbc:postgresql://127.0.0.1:25432/mystocks"
    assert cfg["connection.password"] == "${file:/srv/stack/connect/secrets.properties:postgres_password}"
    assert not any("@" in v and v.endswith("@") for v in cfg.values()), "a placeholder was left"
    spec = get(cfg["topics"])
    assert spec.schema is not None
    extra = {f.split(":")[1] for f in cfg.get("value.converter.header.fields", "").split(",") if f}
    assert set(cfg["primary.key.fields"].split(",")) <= _avro_fields(spec.schema) | extra
    assert cfg["errors.deadletterqueue.topic.name"].startswith("connect.dlq.")


def test_connector_overrides_and_unknown_name() -> None:
    s = load_settings(environ={})
    cfg = connector_config("results-backtest", s, {"connection.password": "${env:POSTGRES_PASSWORD}", "tasks.max": "2"})
    assert cfg["connection.password"] == "${env:POSTGRES_PASSWORD}" and cfg["tasks.max"] == "2"
    assert cfg["value.converter.manifest"].endswith("mystocks_gpu/schemas/manifest.json")
    assert "value.converter.registry.url" not in cfg
    reg = load_settings(environ={"MYSTOCKS_SCHEMA_REGISTRY__URL": "http://reg:8081"})
    assert connector_config("results-backtest", reg)["value.converter.registry.url"] == "http://reg:8081"
    with pytest.raises(ConnectError, match="known: agg-running"):
        connector_config("nope", s)
    assert sorted(p.stem for p in CONNECTORS_DIR.glob("*.json")) == known_connectors()


def _record(logger: logging.Logger, fmt: logging.Formatter, msg: str) -> str:
    buf = io.StringIO()
    h = logging.StreamHandler(buf)
    h.setFormatter(fmt)
    logger.addHandler(h)
    try:
        logger.warning(msg, extra={"fields": {"records": 3}})
    finally:
        logger.removeHandler(h)
    return buf.getvalue().strip()


def test_log_lines_carry_process_and_context_fields() -> None:
    lg = logging.getLogger("test.ops.logs")
    set_process_fields(worker="w-7", processor="features")
    try:
        with log_context(job_id="job-1", partition=3):
            line = json.loads(_record(lg, JsonFormatter(), "batch"))
            seen: list[str] = []
            t = threading.Thread(target=lambda: seen.append(_record(lg, JsonFormatter(), "other thread")))
            t.start()
            t.join()
        after = json.loads(_record(lg, JsonFormatter(), "after"))
        text = _record(lg, TextFormatter(), "text")
    finally:
        set_process_fields(worker=None, processor=None)
    assert line["msg"] == "batch" and line["worker"] == "w-7" and line["processor"] == "features"
    assert line["job_id"] == "job-1" and line["partition"] == 3 and line["records"] == 3
    other = json.loads(seen[0])
    assert "job_id" not in other and other["worker"] == "w-7"  # context is per thread, process fields are not
    assert "job_id" not in after and "partition" not in after
    assert "worker=w-7" in text and "records=3" in text


def test_gpu_gauges_from_devices_and_none_without_gpus() -> None:
    devs = parse_fake_inventory(json.dumps([
        {"id": "gpu0", "kind": "gpu", "name": "H", "total_mb": 1000, "free_mb": 250, "utilization": 0.5, "temperature_c": 61.5},
        {"id": "gpu1", "kind": "gpu", "name": "H", "total_mb": 1000, "free_mb": 1000},
        {"id": "cpu0", "kind": "cpu", "total_mb": 64}]))
    reg = CollectorRegistry()
    register_gpu_metrics(reg, lambda: devs)
    got = {(s.name, s.labels.get("device")): s.value for m in reg.collect() for s in m.samples}
    assert got[("mystocks_gpu_utilization_ratio", "gpu0")] == 0.5
    assert got[("mystocks_gpu_memory_used_bytes", "gpu0")] == 750 * 2**20
    assert got[("mystocks_gpu_memory_total_bytes", "gpu1")] == 1000 * 2**20
    assert got[("mystocks_gpu_temperature_celsius", "gpu0")] == 61.5
    assert ("mystocks_gpu_utilization_ratio", "gpu1") not in got  # unknown, never 0
    assert ("mystocks_gpu_temperature_celsius", "gpu1") not in got  # no NVML here
    assert not any(dev == "cpu0" for _, dev in got)
    cpu_only = CollectorRegistry()
    register_gpu_metrics(cpu_only, lambda: [Device("cpu0", "cpu")])
    assert b"mystocks_gpu_utilization_ratio{" not in generate_latest(cpu_only)
    with pytest.raises(ConfigError, match="temperature_c"):
        parse_fake_inventory('[{"id": "gpu0", "temperature_c": "hot"}]')
    assert Device.from_dict(devs[0].to_dict()) == devs[0]


def test_jobs_by_kind_gauge_goes_to_zero_for_pairs_gone() -> None:
    from mystocks_gpu.jobs import job_metrics as m

    m.set_jobs_by_kind({("queued", "backtest"): 2, ("running", "echo"): 1})
    m.set_jobs_by_kind({("running", "backtest"): 1})
    val = {tuple(s.labels.values()): s.value for mf in m.JOBS_BY_KIND.collect() for s in mf.samples}
    assert val[("queued", "backtest")] == 0 and val[("running", "echo")] == 0 and val[("running", "backtest")] == 1


def test_optional_server_pid_not_ours_is_never_signalled(tmp_path: Path) -> None:
    """A pid file naming a live process that is not this server (a reused pid): not ours, left alone."""
    srv = ManagedServer("postgres", tmp_path, str(tmp_path / "postgres" / "data"), "127.0.0.1", 1)
    me = os.getpid()
    srv.pidfile.write_text(f"{me} {process_start_time(me)}")
    assert srv.pid() is None  # alive, same start time, but its command line lacks the marker
    assert srv.stop() is False and not srv.pidfile.exists()  # stale file removed, nothing signalled
    srv.pidfile.write_text(f"{me} 1")
    assert srv.pid() is None  # a different start time: a reused pid


def test_cli_errors_are_one_line_and_start_nothing() -> None:
    from tests.conftest import run_cli

    r = run_cli("stack", "up", "--with", "connect,grafana")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "unknown component(s) grafana (known: postgres, connect, prometheus)" in r.stderr
    r = run_cli("connect", "status", "results-backtest", env={"MYSTOCKS_SERVICES__CONNECT_URL": "http://127.0.0.1:9"})
    assert r.returncode == 2 and "no Kafka Connect worker answers at http://127.0.0.1:9" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_cli("connect", "create")
    assert r.returncode == 2 and "needs a connector NAME (known: agg-running, alerts, job-status, results-backtest, results-execsim)" in r.stderr


def test_kafka_security_reaches_the_connect_worker_as_java_properties(tmp_path: Path) -> None:
    from mystocks_gpu.infra.exceptions import StackError
    from mystocks_gpu.infra.stack_connect import java_security

    got = java_security({"security.protocol": "sasl_ssl", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "quant",
                         "sasl.password": 'p"w\\x', "ssl.ca.location": "/etc/ca.pem"})
    assert got == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                   "sasl.jaas.config": 'org.apache.kafka.common.security.scram.ScramLoginModule required '
                                       'username="quant" password="p\\"w\\\\x";',
                   "ssl.truststore.type": "PEM", "ssl.truststore.location": "/etc/ca.pem"}
    assert java_security({}) == {}
    with pytest.raises(StackError, match="sasl.kerberos.service.name cannot be passed"):
        java_security({"security.protocol": "SASL_PLAINTEXT", "sasl.kerberos.service.name": "kafka"})
    with pytest.raises(StackError, match="supports PLAIN"):
        java_security({"sasl.mechanism": "GSSAPI"})


def test_an_optional_server_that_cannot_start_raises_with_the_reason(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """What the integration fixtures rely on to FAIL (never skip) when a server cannot start: its
    port held by another process, its program missing, or the program exiting during startup."""
    import socket
    from types import SimpleNamespace

    from mystocks_gpu.infra.exceptions import StackError
    from mystocks_gpu.infra.stack_prometheus import PrometheusServer

    stack = SimpleNamespace(home=tmp_path, cfg=SimpleNamespace(host="127.0.0.1", cache_dir=str(tmp_path / "cache")))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        prom = PrometheusServer(stack, ServicesConfig(prometheus_port=port))  # type: ignore[arg-type]
        with pytest.raises(StackError, match=f"port 127.0.0.1:{port} is taken.*services.prometheus_port"):
            prom.start(timeout_s=5)
    # the program exits at once: the error carries its last log lines
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "prometheus").write_text("#!/bin/sh\necho 'err: bad flag' >&2\nexit 1\n")
    (fake / "prometheus").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake))
    with pytest.raises(StackError, match="(?s)Prometheus exited during startup.*err: bad flag"):
        prom.start(timeout_s=30)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(StackError, match="prometheus is missing .apt-get install prometheus"):
        prom.start(timeout_s=5)
