"""Every test here runs against the real broker and Redis (the session's local stack)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.stack import LocalStack
from mystocks_gpu.infra.stack_connect import ConnectWorker
from mystocks_gpu.infra.stack_postgres import PostgresServer
from mystocks_gpu.infra.stack_prometheus import PrometheusServer


@pytest.fixture(autouse=True)
def _needs_stack(stack: LocalStack) -> None:
    """Start (or reuse) the stack before each integration test; failure to start fails the test."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


# ---- the optional servers, started on demand by the test modules that use them (module scope: the
# rest of the suite never waits for them, and they are stopped when that module ends, if this run
# started them). Never skipped: a server that cannot start raises StackError, so every test that
# needs it errors with the reason (`stack down` in the session teardown stops leftovers too)

@pytest.fixture(scope="module")
def postgres(stack: LocalStack, settings: Settings) -> Iterator[PostgresServer]:
    """The stack's PostgreSQL (the Connect sinks' database)."""
    pg = PostgresServer(stack, settings.services)
    ours = pg.server.pid() is None
    pg.start()
    yield pg
    if ours:
        pg.stop()
        if stack.home.name.startswith("test-"):  # a private stack's cluster (maybe outside its home)
            pg.purge()


@pytest.fixture(scope="module")
def connect_spawned(stack: LocalStack, settings: Settings, postgres: PostgresServer) -> Iterator[ConnectWorker]:
    """The stack's Kafka Connect worker process started (JDBC sink + our converter; PostgreSQL
    up), not yet waited for: a module requests this first, so the JVM comes up while its other
    fixtures start. Stopped at the end of the module when it was started here."""
    worker = ConnectWorker(stack, settings)
    ours = worker.server.pid() is None
    worker.spawn()
    yield worker
    if ours:
        worker.stop()


@pytest.fixture(scope="module")
def connect_worker(connect_spawned: ConnectWorker) -> ConnectWorker:
    """The Connect worker with its REST API up and the JDBC sink plugin listed."""
    connect_spawned.start()
    return connect_spawned


@pytest.fixture(scope="module")
def prometheus(stack: LocalStack, settings: Settings) -> Iterator[PrometheusServer]:
    """The stack's Prometheus, scraping every second (tests add targets with ``add_targets``)."""
    prom = PrometheusServer(stack, dataclasses.replace(settings.services, scrape_interval_s=1.0))
    ours = prom.server.pid() is None
    prom.start()
    yield prom
    if ours:
        prom.stop()


@pytest.fixture
def served_stats(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """The librdkafka statistics documents each broker watch is served, by the watch's client name,
    in order (every :class:`BrokerWatch` of the test's process; its own handling unchanged)."""
    from mystocks_gpu.streams.broker_watch import BrokerWatch

    served: dict[str, list[str]] = {}
    on_stats = BrokerWatch.on_stats

    def keep(self: BrokerWatch, stats_json: str) -> None:
        served.setdefault(self.name, []).append(stats_json)
        on_stats(self, stats_json)

    monkeypatch.setattr(BrokerWatch, "on_stats", keep)
    return served
