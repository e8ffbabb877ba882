"""The gRPC gateway (``mystocks-gpu gateway``): grpcio's asyncio server with the services of
``mystocks_gpu/api/protos`` (package ``mystocks.v1``), the standard health service
(``grpc.health.v1.Health``: SERVING while the job view reads the broker, NOT_SERVING otherwise) and
server reflection. Binds ``gateway.host`` (loopback by default) and ``gateway.port``; TLS with
``api.tls_cert_file``/``api.tls_key_file``; bearer tokens from ``api.auth_file`` (see
:mod:`.grpc_auth`); errors as in :mod:`.grpc_errors`; stream flow control in :mod:`.market_stream`
and :mod:`.job_view`.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mystocks_gpu.api.grpc_auth import AuthInterceptor, GatewayAuth
from mystocks_gpu.api.job_services import (
    BacktestServicer,
    ExecutionServicer,
    FactorServicer,
    JobOps,
    RiskServicer,
    TrainingServicer,
)
from mystocks_gpu.api.job_view import JobView
from mystocks_gpu.api.market_stream import RealTimeServicer, StreamStats
from mystocks_gpu.api.protos import (
    backtest_pb2,
    backtest_pb2_grpc,
    realtime_pb2,
    realtime_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
    workloads_pb2,
    workloads_pb2_grpc,
)
from mystocks_gpu.infra.clock import SYSTEM_CLOCK, Clock
from mystocks_gpu.infra.config import Settings

log = logging.getLogger(__name__)

SERVICES = (
    backtest_pb2.DESCRIPTOR.services_by_name["BacktestService"].full_name,
    realtime_pb2.DESCRIPTOR.services_by_name["RealTimeService"].full_name,
    training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name,
    workloads_pb2.DESCRIPTOR.services_by_name["FactorService"].full_name,
    workloads_pb2.DESCRIPTOR.services_by_name["RiskService"].full_name,
    workloads_pb2.DESCRIPTOR.services_by_name["ExecutionService"].full_name,
)


def is_loopback(host: str) -> bool:
    """True for loopback addresses and ``localhost``."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Gateway:
    """One gateway server: create, ``await start()``, ``await stop()``."""

    def __init__(self, settings: Settings, clock: Clock = SYSTEM_CLOCK, auth: GatewayAuth | None = None) -> None:
        self.settings, self.gw, self.clock = settings, settings.gateway, clock
        self.auth = auth or GatewayAuth(settings.api, clock)
        self.view = JobView(settings, settings.jobs, history_max=self.gw.history_max,
                            watch_queue_max=self.gw.watch_queue_max, clock=clock)
        self.stats = StreamStats()
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.ops: JobOps | None = None
        self.port = 0
        self._health_task: asyncio.Task[None] | None = None
        self._serving = False  # what the health service last said (SERVING or not)

    def warnings(self) -> list[str]:
        """What is unsafe in this configuration (binding beyond loopback without TLS or tokens)."""
        if is_loopback(self.gw.host):
            return []
        missing = [w for w, ok in (("TLS (api.tls_cert_file)", self.settings.api.tls_cert_file is not None),
                                   ("bearer tokens (api.auth_file)", self.auth.enabled)) if not ok]
        return [f"the gateway binds {self.gw.host}, beyond loopback, without {' and '.join(missing)}"] if missing else []

    async def start(self) -> int:
        """Start serving; returns the bound port."""
        loop = asyncio.get_running_loop()
        self.view.start(loop)
        self.ops = JobOps(self.settings, self.settings.jobs, self.gw, self.view, self.auth, self.clock)
        server = grpc.aio.server(interceptors=[AuthInterceptor(self.auth)],
                                 options=[("grpc.max_send_message_length", self.gw.max_message_bytes),
                                          ("grpc.max_receive_message_length", self.gw.max_message_bytes)])
        backtest_pb2_grpc.add_BacktestServiceServicer_to_server(BacktestServicer(self.ops), server)
        training_pb2_grpc.add_TrainingServiceServicer_to_server(TrainingServicer(self.ops), server)
        workloads_pb2_grpc.add_FactorServiceServicer_to_server(FactorServicer(self.ops), server)
        workloads_pb2_grpc.add_RiskServiceServicer_to_server(RiskServicer(self.ops), server)
        workloads_pb2_grpc.add_ExecutionServiceServicer_to_server(ExecutionServicer(self.ops), server)
        realtime_pb2_grpc.add_RealTimeServiceServicer_to_server(RealTimeServicer(self.settings, self.gw, self.stats),
                                                                server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection((*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        address = f"{self.gw.host}:{self.gw.port}"
        api = self.settings.api
        if api.tls_cert_file is not None and api.tls_key_file is not None:
            creds = grpc.ssl_server_credentials([(Path(api.tls_key_file).read_bytes(),
                                                  Path(api.tls_cert_file).read_bytes())])
            self.port = server.add_secure_port(address, creds)
        else:
            self.port = server.add_insecure_port(address)
        await server.start()
        self.server = server
        await self._set_health(False)
        self._health_task = asyncio.ensure_future(self._watch_health())
        for w in self.warnings():
            log.warning(w)
        log.info("gRPC gateway on %s (%s)", f"{self.gw.host}:{self.port}", "TLS" if api.tls_cert_file else "plaintext")
        return self.port

    async def _set_health(self, ok: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set("", status)
        for name in SERVICES:
            await self.health.set(name, status)
        self._serving = ok

    async def _watch_health(self) -> None:
        """Every 0.1 s: publish the health of the job view when it changes, and serve the command
        producer's events (:meth:`JobOps.serve`)."""
        last = None
        while True:
            if self.ops is not None:
                self.ops.serve()
            ok = self.view.ready.is_set() and not self.view.error
            if ok != last:
                await self._set_health(ok)
                last = ok
            await asyncio.sleep(0.1)

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait until the job view reads the broker and the health service says SERVING (the
        health watcher publishes it within 0.1 s of the view being ready)."""
        end = self.clock.monotonic() + timeout_s
        while self.clock.monotonic() < end:
            if self.view.ready.is_set():
                if not await self.view.sync(max(0.1, end - self.clock.monotonic())):
                    return False
                while not self._serving and self.clock.monotonic() < end:
                    await asyncio.sleep(0.02)
                return self._serving
            await asyncio.sleep(0.02)
        return False

    async def stop(self, grace_s: float = 2.0) -> None:
        """Stop serving (streams get ``grace_s`` to finish) and stop the topic readers."""
        if self._health_task is not None:
            self._health_task.cancel()
        if self.server is not None:
            await self.health.enter_graceful_shutdown()
            await self.server.stop(grace_s)
        if self.ops is not None:
            self.ops.close()
        await asyncio.get_running_loop().run_in_executor(None, self.view.stop)


async def serve(settings: Settings) -> None:
    """Run a gateway until cancelled (SIGINT/SIGTERM in the CLI)."""
    gw = Gateway(settings)
    port = await gw.start()
    print(f"gRPC gateway on {settings.gateway.host}:{port} "
          f"({'TLS' if settings.api.tls_cert_file else 'plaintext'}, "
          f"{'bearer tokens' if gw.auth.enabled else 'no auth: anonymous admin'}); Ctrl-C stops", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await gw.stop()
