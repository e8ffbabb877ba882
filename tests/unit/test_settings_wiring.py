"""Settings that must take effect, without a broker: Kafka security for the Faust control app, the
auth/TLS vs unreachable broker message, the backend from the TOML file, the granted device around a
job runner, and GPU utilisation from NVML (or None, never a made-up 0)."""

from __future__ import annotations

import ssl
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from prometheus_client import REGISTRY

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.config import KafkaConfig, load_settings
from mystocks_gpu.infra.devices import Device, discover, parse_fake_inventory
from mystocks_gpu.infra.exceptions import BrokerAuthFailed, BrokerUnreachable
from mystocks_gpu.infra.kafka_clients import broker_error
from mystocks_gpu.jobs.faust_security import faust_credentials
from mystocks_gpu.jobs.scheduler import WorkerInfo


# ---- [kafka.security] -> Faust broker credentials ----------------------------------------------------
@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A self-signed CA and a client certificate/key signed by it (openssl)."""
    d = tmp_path_factory.mktemp("certs")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca", "-keyout", "ca.key",
        "-out", "ca.pem")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=client", "-keyout", "client.key", "-out", "client.csr")
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-out", "client.pem")
    return {k: str(d / f) for k, f in (("ca", "ca.pem"), ("cert", "client.pem"), ("key", "client.key"))}


def _kafka(**security: str) -> KafkaConfig:
    return KafkaConfig(bootstrap_servers="b1:9093,b2:9093", security=security)


def _ca_subjects(ctx: ssl.SSLContext) -> list[str]:
    return [dict(x[0] for x in c["subject"])["commonName"] for c in ctx.get_ca_certs()]


def test_sasl_ssl_scram_becomes_faust_sasl_credentials_with_the_ca(certs: dict[str, str]) -> None:
    creds = faust_credentials(_kafka(**{"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                                        "sasl.username": "quant", "sasl.password": "hunter2",
                                        "ssl.ca.location": certs["ca"]}))
    auth = credentials_to_aiokafka_auth(creds)  # what Faust hands aiokafka
    assert {k: auth[k] for k in ("security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password")} \
        == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "quant",
            "sasl_plain_password": "hunter2"}
    ctx = auth["ssl_context"]
    assert _ca_subjects(ctx) == ["test-ca"] and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert "hunter2" not in repr(creds)


def test_ssl_with_ca_and_client_certificate(certs: dict[str, str]) -> None:
    creds = faust_credentials(_kafka(**{"security.protocol": "SSL", "ssl.ca.location": certs["ca"],
                                        "ssl.certificate.location": certs["cert"], "ssl.key.location": certs["key"],
                                        "ssl.endpoint.identification.algorithm": "none"}))
    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == "SSL"
    ctx = auth["ssl_context"]
    assert _ca_subjects(ctx) == ["test-ca"] and not ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED


def test_plaintext_and_sasl_plaintext() -> None:
    assert faust_credentials(_kafka()) is None
    assert faust_credentials(_kafka(**{"security.protocol": "PLAINTEXT"})) is None
    auth = credentials_to_aiokafka_auth(faust_credentials(_kafka(**{
        "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN", "sasl.username": "u", "sasl.password": "p"})))
    assert (auth["security_protocol"], auth["sasl_mechanism"], auth["ssl_context"]) == ("SASL_PLAINTEXT", "PLAIN", None)


@pytest.mark.parametrize("security, fragment", [
    ({"security.protocol": "SSL", "ssl.keystore.location": "/k.p12"}, "kafka.security.ssl.keystore.location is not supported"),
    ({"security.protocol": "SASL_SSL", "sasl.mechanism": "OAUTHBEARER"}, "OAUTHBEARER is not supported"),
    ({"security.protocol": "SSL", "ssl.ca.location": "/nope/ca.pem"}, "kafka.security.ssl.ca.location: /nope/ca.pem does not exist"),
    ({"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-256"}, "needs sasl.username and sasl.password"),
])
def test_security_the_control_app_cannot_honour_is_a_config_error(security: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        faust_credentials(_kafka(**security))
    assert fragment in str(exc.value)


def test_control_app_passes_the_credentials_to_faust(certs: dict[str, str]) -> None:
    from mystocks_gpu.jobs.control_app import ControlApp

    s = load_settings(environ={"MYSTOCKS_KAFKA__SECURITY__SECURITY_PROTOCOL": "SASL_SSL",
                               "MYSTOCKS_KAFKA__SECURITY__SASL_MECHANISM": "SCRAM-SHA-256",
                               "MYSTOCKS_KAFKA__SECURITY__SASL_USERNAME": "quant",
                               "MYSTOCKS_KAFKA__SECURITY__SASL_PASSWORD": "pw",
                               "MYSTOCKS_KAFKA__SECURITY__SSL_CA_LOCATION": certs["ca"]})
    app = ControlApp(s, s.jobs).app
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials)
    assert (auth["security_protocol"], auth["sasl_mechanism"], auth["sasl_plain_username"]) == \
        ("SASL_SSL", "SCRAM-SHA-256", "quant")


# ---- ensure_broker: authentication / TLS failures are not "is the stack up?" ---------------------------
def test_auth_and_tls_failures_are_told_apart_from_an_unreachable_broker() -> None:
    cfg = _kafka(**{"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "quant",
                    "sasl.password": "hunter2"})
    timeout = KafkaError(KafkaError._TRANSPORT, "Failed to get metadata: Local: Broker transport failure")
    auth = broker_error(cfg, [KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: Authentication "
                                         "failed during authentication due to invalid credentials with SASL "
                                         "mechanism SCRAM-SHA-512"), timeout])
    assert isinstance(auth, BrokerAuthFailed) and auth.exit_code == 2
    msg = str(auth)
    assert "refused the client's credentials" in msg and "sasl.username=quant" in msg and "SCRAM-SHA-512" in msg
    assert "stack up" not in msg and "hunter2" not in msg
    for code in (KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError.TOPIC_AUTHORIZATION_FAILED):
        assert isinstance(broker_error(cfg, [KafkaError(code, "denied")]), BrokerAuthFailed)
    tls = broker_error(_kafka(**{"security.protocol": "SSL", "ssl.ca.location": "/etc/ca.pem"}),
                       [KafkaError(KafkaError._SSL, "SSL handshake failed: certificate verify failed"), timeout])
    assert isinstance(tls, BrokerAuthFailed) and "TLS with Kafka" in str(tls) and "ssl.ca.location=/etc/ca.pem" in str(tls)
    down = broker_error(_kafka(), [KafkaError(KafkaError._TRANSPORT, "Connection refused"), timeout])
    assert isinstance(down, BrokerUnreachable) and "is the stack up?" in str(down)
    assert "Broker transport failure" in str(down)


# ---- backend from the TOML file ---------------------------------------------------------------------
@pytest.fixture()
def fake_gpu_present(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the backend selection believe a CUDA device is present (so ``auto`` would pick the GPU)."""
    import mystocks_gpu.gpu_ops.backend as backend

    monkeypatch.setattr(backend, "gpu_available", lambda: (True, "fake GPU"))


def _toml(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "backend.toml"
    f.write_text(text)
    return f


def test_backend_cpu_in_toml_reaches_a_processor_and_a_job(tmp_path: Path, fake_gpu_present: None) -> None:
    from mystocks_gpu.jobs.job_worker import JobWorker, WorkerOptions
    from mystocks_gpu.processors.stream_processors import create

    s = load_settings(_toml(tmp_path, 'backend = "cpu"\n'), environ={})
    assert create("features", backend=s.backend).backend == "cpu"  # not the (fake) GPU that auto would pick
    fake = tuple(parse_fake_inventory('[{"id": "gpu0"}, {"id": "gpu1"}]'))
    worker = JobWorker(s, s.jobs, WorkerOptions("w-cpu", (), fake))
    assert worker.backend == "cpu"
    auto = JobWorker(load_settings(environ={}), s.jobs, WorkerOptions("w-auto", (), fake))
    assert auto.backend == "gpu"  # the same machine under `auto`: the setting made the difference


def test_backend_gpu_without_a_gpu_is_a_clear_error(tmp_path: Path) -> None:
    from mystocks_gpu.gpu_ops.backend import gpu_available
    from tests.conftest import run_cli

    if gpu_available()[0]:
        pytest.skip("a CUDA device is present here: backend = gpu is valid")
    f = _toml(tmp_path, 'backend = "gpu"\n')
    for args in (("worker", "--id", "w-gpu"), ("run", "features", "--idle-exit", "1")):
        r = run_cli("--config", str(f), *args, timeout=60,
                    env={"MYSTOCKS_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1", "MYSTOCKS_KAFKA__CONNECT_TIMEOUT_S": "2"})
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith("mystocks-gpu: error: backend 'gpu' requested but unavailable")


# ---- the granted device around the runner ----------------------------------------------------------
@pytest.fixture()
def fake_cupy(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int]]]:
    """A stand-in ``cupy`` module recording which CUDA device is entered and left."""
    events: list[tuple[str, int]] = []

    class _Device:
        def __init__(self, n: int) -> None:
            self.n = n

        def __enter__(self) -> _Device:
            events.append(("enter", self.n))
            return self

        def __exit__(self, *exc: Any) -> None:
            events.append(("exit", self.n))

    mod = types.ModuleType("cupy")
    mod.cuda = types.SimpleNamespace(Device=_Device)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cupy", mod)
    yield events


def test_run_context_selects_the_granted_gpu(fake_cupy: list[tuple[str, int]]) -> None:
    from mystocks_gpu.jobs.run_scope import device_scope, run_context
    from mystocks_gpu.processors.job_kind import current_run

    devs = {d.id: d for d in parse_fake_inventory('[{"id": "gpu0"}, {"id": "gpu1"}, {"id": "cpu0", "kind": "cpu"}]')}
    ctx = run_context("job-a", 2, "gpu1", devs, "gpu")
    assert (ctx.device_id, ctx.cuda_device, ctx.backend) == ("gpu1", 1, "gpu")
    seen = []
    with device_scope(ctx):
        seen.append((current_run(), list(fake_cupy)))
    assert seen == [(ctx, [("enter", 1)])] and fake_cupy == [("enter", 1), ("exit", 1)]
    assert current_run() is None
    fake_cupy.clear()
    for device, backend in (("cpu0", "gpu"), ("gpu1", "cpu")):  # a CPU grant, or a worker on the CPU backend
        ctx = run_context("job-a", 0, device, devs, backend)
        assert ctx.backend == "cpu"
        with device_scope(ctx):
            assert current_run() == ctx
    assert fake_cupy == []  # no CUDA device selected for CPU chunks


# ---- GPU utilisation: NVML, or None ----------------------------------------------------------------
def _fake_pynvml(util_pct: list[int]) -> types.ModuleType:
    mod = types.ModuleType("pynvml")
    mod.nvmlInit = lambda: None  # type: ignore[attr-defined]
    mod.nvmlDeviceGetCount = lambda: len(util_pct)  # type: ignore[attr-defined]
    mod.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    mod.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=util_pct[h], memory=0)  # type: ignore[attr-defined]
    mod.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=80 << 30, free=60 << 30, used=20 << 30)  # type: ignore[attr-defined]
    mod.nvmlDeviceGetName = lambda h: b"Fake H200"  # type: ignore[attr-defined]
    return mod


def test_gpu_utilisation_comes_from_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)  # no CuPy: NVML alone describes the GPUs
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([37, 100]))
    devs = discover("gpu")
    assert [(d.id, d.utilization, d.total_bytes, d.free_bytes) for d in devs] == \
        [("gpu0", 0.37, 80 << 30, 60 << 30), ("gpu1", 1.0, 80 << 30, 60 << 30)]


def test_gpu_utilisation_without_nvml_is_none_not_zero(monkeypatch: pytest.MonkeyPatch,
                                                       fake_cupy: list[tuple[str, int]]) -> None:
    cupy = sys.modules["cupy"]
    cupy.cuda.runtime = types.SimpleNamespace(  # type: ignore[attr-defined]
        getDeviceCount=lambda: 1, memGetInfo=lambda: (3 << 30, 4 << 30), getDeviceProperties=lambda i: {"name": b"G"})
    monkeypatch.setitem(sys.modules, "pynvml", None)  # nvidia-ml-py not installed
    (dev,) = discover("gpu")
    assert (dev.id, dev.free_bytes, dev.total_bytes, dev.utilization) == ("gpu0", 3 << 30, 4 << 30, None)
    assert Device.from_dict(dev.to_dict()) == dev  # heartbeats carry "unknown" as null


def test_unknown_utilisation_exports_no_series_and_raises_no_alert() -> None:
    from mystocks_gpu.jobs.alerts import AlertMonitor

    mon = AlertMonitor()
    hot = WorkerInfo("wu", ("echo",), (Device("gpu0", "gpu", "g", 100, 50, 0.99),))
    assert [a["kind"] for a in mon.check_devices([hot])] == ["GPU_OVERLOAD"]
    labels = {"worker": "wu", "device": "gpu0"}
    assert REGISTRY.get_sample_value("mystocks_device_utilization_ratio", labels) == 0.99
    unknown = WorkerInfo("wu", ("echo",), (Device("gpu0", "gpu", "g", 100, 50, None),))
    assert mon.check_devices([unknown]) == []
    assert REGISTRY.get_sample_value("mystocks_device_utilization_ratio", labels) is None
    assert REGISTRY.get_sample_value("mystocks_device_utilization_ratio", labels) != 0.0
    assert parse_fake_inventory('[{"id": "gpu0"}]')[0].utilization is None
    with pytest.raises(ConfigError, match="utilization must be a number within 0..1"):
        parse_fake_inventory('[{"id": "gpu0", "utilization": 5}]')
