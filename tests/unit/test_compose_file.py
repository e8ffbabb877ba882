"""docker-compose.yml passes `docker-compose config -q` (Debian's docker-compose, which `make install`
installs; no Docker daemon needed) and is checked by structure: known keys, services that exist,
health checks behind ``service_healthy``, valid port mappings, mounted files that exist, and the
same Kafka release and host ports as the local stack."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mystocks_gpu.infra.config import StackConfig

ROOT = Path(__file__).resolve().parents[2]
TOP_KEYS = {"services", "volumes", "networks", "configs", "secrets", "name"}
SERVICE_KEYS = {"image", "build", "command", "entrypoint", "environment", "env_file", "ports", "volumes",
                "depends_on", "healthcheck", "restart", "working_dir", "user", "networks", "profiles",
                "deploy", "labels", "expose", "stop_grace_period", "container_name", "hostname"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
PORT = re.compile(r"^(?:(?P<ip>\d+\.\d+\.\d+\.\d+):)?(?:(?P<host>\d+):)?(?P<container>\d+)(?:/(tcp|udp))?$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    import yaml  # dev extra; imported here so a GPU-only run (-m gpu) on a bare box can collect this file

    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # resolves anchors and << merges
    assert isinstance(doc, dict)
    return doc


def test_docker_compose_config_accepts_the_file() -> None:
    tool = shutil.which("docker-compose")
    assert tool, "docker-compose is missing: apt-get install docker-compose (`make install` installs it)"
    r = subprocess.run([tool, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_top_level_and_service_keys_are_known(compose: dict[str, Any]) -> None:
    unknown = {k for k in compose if k not in TOP_KEYS and not k.startswith("x-")}
    assert not unknown, f"unknown top-level keys {unknown}"
    assert compose["services"], "no services"
    for name, svc in compose["services"].items():
        assert isinstance(svc, dict), name
        assert set(svc) <= SERVICE_KEYS, f"{name}: unknown keys {set(svc) - SERVICE_KEYS}"
        assert "image" in svc or "build" in svc, f"{name}: neither image nor build"


def test_dependencies_exist_and_health_conditions_have_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        items = {d: {"condition": "service_started"} for d in deps} if isinstance(deps, list) else deps
        for dep, spec in items.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert dep != name
            assert spec["condition"] in CONDITIONS, f"{name} -> {dep}: {spec['condition']}"
            if spec["condition"] == "service_healthy":
                test = services[dep].get("healthcheck", {}).get("test")
                assert test and test[0] in {"CMD", "CMD-SHELL"}, f"{dep} has no health check for {name}"


def test_ports_volumes_and_environment(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for p in svc.get("ports", []):
            m = PORT.match(str(p))
            assert m, f"{name}: bad port mapping {p!r}"
            assert m["ip"] == "127.0.0.1", f"{name}: {p} is published beyond loopback"
        for v in svc.get("volumes", []):
            host = str(v).split(":")[0]
            if host.startswith("."):
                assert (ROOT / host).exists(), f"{name}: mounts missing {host}"
        env = svc.get("environment", {})
        assert isinstance(env, (dict, list)), name
        for key in env if isinstance(env, dict) else [e.split("=")[0] for e in env]:
            assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"{name}: bad variable name {key}"


def test_same_kafka_release_and_host_ports_as_the_local_stack(compose: dict[str, Any]) -> None:
    cfg = StackConfig()
    services = compose["services"]
    assert services["kafka"]["image"] == f"apache/kafka:{cfg.kafka_version}"
    assert f"127.0.0.1:{cfg.kafka_port}:{cfg.kafka_port}" in services["kafka"]["ports"]
    assert any(str(p).startswith(f"127.0.0.1:{cfg.redis_port}:") for p in services["redis"]["ports"])
    listeners = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"127.0.0.1:{cfg.kafka_port}" in listeners


def test_compose_prometheus_scrapes_every_metrics_endpoint_and_loads_the_rules(compose: dict[str, Any]) -> None:
    """In step with the services: each scrape target is a service serving metrics on that port,
    every service with a metrics port is scraped, and the mounted config names the rules file."""
    import yaml

    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for sc in prom["scrape_configs"] for s in sc["static_configs"] for t in s["targets"]}
    services = compose["services"]
    serving = set()
    for name, svc in services.items():
        cmd = [str(c) for c in svc.get("command", [])]
        for flag in ("--metrics-port", "--port"):
            if flag in cmd and not (flag == "--port" and cmd[0] == "gateway"):  # the gateway's port is gRPC
                serving.add(f"{name}:{cmd[cmd.index(flag) + 1]}")
    assert targets == serving, (targets, serving)
    assert prom["rule_files"] == ["/etc/prometheus/rules.yml"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert (ROOT / "deploy" / "prometheus" / "rules.yml").exists()
