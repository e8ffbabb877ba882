"""A small Python client of the gRPC gateway (also importable as ``mystocks_gpu.client``).

    from mystocks_gpu.client import GatewayClient

    with GatewayClient("127.0.0.1:50051", token="mst_...") as gc:
        job_id = gc.submit_backtest({"symbols": ["AAA"], ...})
        for st in gc.watch(job_id):          # every status until a final one
            print(st.state, st.progress)
        result = gc.result(job_id)           # the result dict (what `submit --wait` prints)
        for md in gc.market_data(["AAA"], start="earliest", max_records=1000):
            for t in md.ticks: ...

Errors are :class:`grpc.RpcError` with the gateway's status code (see ``api.grpc_errors``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from mystocks_gpu.api.protos import (
    backtest_pb2_grpc,
    common_pb2,
    realtime_pb2,
    realtime_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
    workloads_pb2,
    workloads_pb2_grpc,
)

STATE_NAMES = {v.number: v.name.removeprefix("JOB_STATE_").lower()
               for v in common_pb2.DESCRIPTOR.enum_types_by_name["JobState"].values}
START = {"latest": realtime_pb2.START_FROM_LATEST, "earliest": realtime_pb2.START_FROM_EARLIEST,
         "time": realtime_pb2.START_FROM_TIME, "offset": realtime_pb2.START_FROM_OFFSET}


class _Metadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
                grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call (works on plaintext channels too)."""

    def __init__(self, token: str) -> None:
        self.md = (("authorization", f"Bearer {token}"),)

    def _details(self, d: Any) -> Any:
        return d._replace(metadata=tuple(d.metadata or ()) + self.md)

    def intercept_unary_unary(self, continuation: Any, d: Any, request: Any) -> Any:
        return continuation(self._details(d), request)

    def intercept_unary_stream(self, continuation: Any, d: Any, request: Any) -> Any:
        return continuation(self._details(d), request)

    def intercept_stream_unary(self, continuation: Any, d: Any, it: Any) -> Any:
        return continuation(self._details(d), it)

    def intercept_stream_stream(self, continuation: Any, d: Any, it: Any) -> Any:
        return continuation(self._details(d), it)


def state_name(state: int) -> str:
    """``JOB_STATE_SUCCEEDED`` (as a number) -> ``"succeeded"``."""
    return STATE_NAMES.get(state, "unspecified")


def open_channel(target: str, token: str | None = None, ca_file: str | None = None,
                 options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A channel to the gateway: TLS when ``ca_file`` is given, the token on every call
    (``options``: grpc channel arguments)."""
    if ca_file:
        with open(ca_file, "rb") as f:
            channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(f.read()), options=list(options))
    else:
        channel = grpc.insecure_channel(target, options=list(options))
    return grpc.intercept_channel(channel, _Metadata(token)) if token else channel


class GatewayClient:
    """Wraps the generated stubs for the common calls (see the module docstring)."""

    def __init__(self, target: str, token: str | None = None, ca_file: str | None = None,
                 timeout_s: float = 30.0) -> None:
        self.channel = open_channel(target, token, ca_file)
        self.timeout_s = timeout_s
        self.backtest = backtest_pb2_grpc.BacktestServiceStub(self.channel)
        self.training = training_pb2_grpc.TrainingServiceStub(self.channel)
        self.realtime = realtime_pb2_grpc.RealTimeServiceStub(self.channel)
        self.factors = workloads_pb2_grpc.FactorServiceStub(self.channel)
        self.risk = workloads_pb2_grpc.RiskServiceStub(self.channel)
        self.execution = workloads_pb2_grpc.ExecutionServiceStub(self.channel)

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    @staticmethod
    def _job(spec: dict[str, Any] | str, priority: int, deadline_s: float, job_id: str,
             bypass_cache: bool) -> common_pb2.JobRequest:
        return common_pb2.JobRequest(spec_json=spec if isinstance(spec, str) else json.dumps(spec), priority=priority,
                                     deadline_s=deadline_s, job_id=job_id, bypass_cache=bypass_cache)

    def submit_backtest(self, spec: dict[str, Any] | str, *, priority: int = 0, deadline_s: float = 0.0,
                        job_id: str = "", bypass_cache: bool = False) -> str:
        """Submit a backtest; returns its job id."""
        req = self._job(spec, priority, deadline_s, job_id, bypass_cache)
        return str(self.backtest.SubmitBacktestTask(req, timeout=self.timeout_s).job_id)

    def submit_training(self, spec: dict[str, Any] | str, *, priority: int = 0, deadline_s: float = 0.0,
                        job_id: str = "", bypass_cache: bool = False) -> str:
        """Submit a training job; returns its job id."""
        req = self._job(spec, priority, deadline_s, job_id, bypass_cache)
        return str(self.training.SubmitTrainingJob(req, timeout=self.timeout_s).job_id)

    def schedule_order(self, spec: dict[str, Any] | str, *, priority: int = 0, deadline_s: float = 0.0,
                       job_id: str = "") -> str:
        """Schedule a parent order (the execution kind's job); returns its job id."""
        req = workloads_pb2.OrderRequest(spec_json=spec if isinstance(spec, str) else json.dumps(spec),
                                         priority=priority, deadline_s=deadline_s, job_id=job_id)
        return str(self.execution.ScheduleOrder(req, timeout=self.timeout_s).job_id)

    def status(self, job_id: str) -> common_pb2.TaskStatus:
        """The job's latest status (any kind)."""
        return self.backtest.QueryBacktestResult(common_pb2.QueryRequest(job_id=job_id), timeout=self.timeout_s).status

    def watch(self, job_id: str, timeout_s: float | None = None) -> Iterator[common_pb2.TaskStatus]:
        """Every status of the job in order until a final one."""
        yield from self.backtest.WatchTask(common_pb2.WatchRequest(job_id=job_id), timeout=timeout_s)

    def wait(self, job_id: str, timeout_s: float | None = None) -> common_pb2.TaskStatus:
        """The job's final status."""
        last = None
        for st in self.watch(job_id, timeout_s):
            last = st
        assert last is not None
        return last

    def result(self, job_id: str) -> Any:
        """The result of a succeeded backtest (parsed JSON), or None while it has none."""
        rj = self.status(job_id).result_json
        return json.loads(rj) if rj else None

    def history(self, requester: str = "", page_size: int = 100) -> Iterator[common_pb2.TaskStatus]:
        """Every backtest of ``requester`` (default: the caller), newest first, page by page."""
        token = ""
        while True:
            page = self.backtest.GetBacktestHistory(common_pb2.HistoryRequest(requester=requester, page_size=page_size,
                                                                              page_token=token), timeout=self.timeout_s)
            yield from page.jobs
            token = page.next_page_token
            if not token:
                return

    def model_metrics(self, job_id: str) -> training_pb2.ModelMetrics:
        """The metrics of a succeeded training job."""
        return self.training.GetModelMetrics(training_pb2.MetricsRequest(job_id=job_id), timeout=self.timeout_s)

    def market_data(self, symbols: Sequence[str] = (), *, topic: str = "md.ticks", start: str = "latest",
                    start_time_ns: int = 0, start_offset: int = 0, max_records: int = 0, max_batch: int = 0,
                    timeout_s: float | None = None) -> Iterator[realtime_pb2.MarketData]:
        """``SubscribeMarketData`` (the first, empty message -- "positioned" -- is skipped)."""
        req = realtime_pb2.SubscriptionRequest(symbols=list(symbols), topic=topic, start=START[start],
                                               start_time_ns=start_time_ns, start_offset=start_offset,
                                               max_records=max_records, max_batch=max_batch)
        for md in self.realtime.SubscribeMarketData(req, timeout=timeout_s):
            if md.ticks or md.bars:
                yield md

    def latest_features(self, symbols: Sequence[str], features: Sequence[str] = ()) -> realtime_pb2.FeatureResponse:
        """The newest feature vector of each symbol."""
        return self.realtime.ProcessFeatureCalculation(
            realtime_pb2.FeatureRequest(symbols=list(symbols), features=list(features)), timeout=self.timeout_s)
