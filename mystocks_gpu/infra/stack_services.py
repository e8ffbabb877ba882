"""The optional servers of the local stack together: start the ones ``stack up --with`` names (in
order: PostgreSQL, Connect, Prometheus), report and stop them. ``LocalStack.down`` calls
:func:`stop_services` first, so ``stack down`` (and a test run's teardown) stops everything."""

from __future__ import annotations

from dataclasses import dataclass

from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.services_config import ServicesConfig
from mystocks_gpu.infra.stack_connect import ConnectWorker
from mystocks_gpu.infra.stack_postgres import PostgresServer
from mystocks_gpu.infra.stack_process import StackLike, port_open
from mystocks_gpu.infra.stack_prometheus import PrometheusServer


@dataclass(frozen=True)
class ServiceStatus:
    """One optional server: ``running`` (ours), ``stopped``, ``off`` (not started, port free) or
    ``foreign`` (port held by a process this stack did not start)."""

    name: str
    state: str
    pid: int | None
    address: str


def start_services(stack: StackLike, settings: Settings, components: tuple[str, ...]) -> list[ServiceStatus]:
    """Start ``components`` (names from :data:`services_config.OPTIONAL_COMPONENTS`, idempotent;
    Kafka must be up) and return the status of every optional server."""
    if "postgres" in components:
        PostgresServer(stack, settings.services).start()
    if "connect" in components:
        ConnectWorker(stack, settings).start()
    if "prometheus" in components:
        PrometheusServer(stack, settings.services).start()
    return services_status(stack, settings)


def services_status(stack: StackLike, settings: Settings) -> list[ServiceStatus]:
    """State of each optional server."""
    cfg = settings.services
    out = []
    for name, server in (("postgres", PostgresServer(stack, cfg).server), ("connect", ConnectWorker(stack, settings).server),
                         ("prometheus", PrometheusServer(stack, cfg).server)):
        pid = server.pid()
        addr = f"{server.host}:{server.port}"
        state = "running" if pid is not None else ("foreign" if port_open(server.host, server.port) else "off")
        out.append(ServiceStatus(name, state, pid, addr))
    return out


def stop_services(stack: StackLike) -> list[str]:
    """Stop the optional servers of this stack's home that are running (Connect first, PostgreSQL
    last); returns their names. Needs no settings: pid files and command lines identify them."""
    settings = Settings(services=ServicesConfig())
    stopped = []
    if ConnectWorker(stack, settings).stop():
        stopped.append("connect")
    if PrometheusServer(stack, settings.services).stop():
        stopped.append("prometheus")
    if PostgresServer(stack, settings.services).stop():
        stopped.append("postgres")
    return stopped
