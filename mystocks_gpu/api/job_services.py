"""The job services of the gateway: Backtest, Training, Factor, Risk and Execution.

Each is a thin mapping onto the job plane: a submission is a SUBMIT command produced to
``cmd.jobs`` (acknowledged by the broker before the call returns; validated first with the kind's
typed spec, so a bad spec is ``INVALID_ARGUMENT`` naming the field); queries, history and watches
read the :class:`~mystocks_gpu.api.job_view.JobView` (built from ``cmd.jobs`` and ``job.status``);
result streams read ``results.<kind>`` records keyed by the job id. Kinds are looked up by name
(``[gateway]`` settings), so a service whose kind is not installed answers ``FAILED_PRECONDITION``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from confluent_kafka import TopicPartition

from mystocks_gpu.api.grpc_auth import GatewayAuth, caller
from mystocks_gpu.api.grpc_errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
    mapped,
)
from mystocks_gpu.api.job_view import JobEntry, JobView
from mystocks_gpu.api.protos import (
    backtest_pb2_grpc,
    common_pb2,
    training_pb2,
    training_pb2_grpc,
    workloads_pb2_grpc,
)
from mystocks_gpu.api.topic_scan import read_until
from mystocks_gpu.infra.clock import SYSTEM_CLOCK, Clock
from mystocks_gpu.infra.config import GatewayConfig, Settings
from mystocks_gpu.infra.kafka_clients import (
    DeliveryTracker,
    make_consumer,
    watermarks,
)
from mystocks_gpu.jobs.jobs_config import JobsConfig
from mystocks_gpu.jobs.kinds import kinds
from mystocks_gpu.jobs.protocol import COMMAND_SCHEMA, FINAL, check_submit, make_command, new_job_id
from mystocks_gpu.schemas import AvroCodec, schema_store
from mystocks_gpu.streams.broker_watch import watched_producer

STATE = {"queued": common_pb2.JOB_STATE_QUEUED, "running": common_pb2.JOB_STATE_RUNNING,
         "succeeded": common_pb2.JOB_STATE_SUCCEEDED, "failed": common_pb2.JOB_STATE_FAILED,
         "cancelled": common_pb2.JOB_STATE_CANCELLED, "rejected": common_pb2.JOB_STATE_REJECTED}


def status_message(st: dict[str, Any]) -> common_pb2.TaskStatus:
    """A ``job.status`` record (client JSON form) as a :class:`TaskStatus` message."""
    result = st.get("result")
    return common_pb2.TaskStatus(
        job_id=st["job_id"], kind=st.get("kind") or "", state=STATE.get(st["state"], common_pb2.JOB_STATE_UNSPECIFIED),
        progress=float(st.get("progress") or 0.0), message=st.get("message") or "", error=st.get("error") or "",
        worker=st.get("worker") or "", cached=bool(st.get("cached")), ts_event_ns=int(st.get("ts_event") or 0),
        result_json=json.dumps(result, sort_keys=True) if result is not None else "", final=st["state"] in FINAL)


class JobOps:
    """What every job service does, for any kind name."""

    def __init__(self, settings: Settings, cfg: JobsConfig, gw: GatewayConfig, view: JobView, auth: GatewayAuth,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings, self.cfg, self.gw, self.view, self.auth, self.clock = settings, cfg, gw, view, auth, clock
        self.codec = AvroCodec(schema_store(settings))
        #: the command producer, watched (librdkafka#5301: a client left with no broker gets the
        #: bootstrap servers back); its statistics are served by :meth:`serve`, called by the gateway
        conf: dict[str, Any] = {"compression.type": "none", "linger.ms": 0}
        self.producer = watched_producer(settings.kafka, "gateway commands", clock=clock, **conf)

    def serve(self) -> None:
        """Serve the command producer's queued events (its statistics, which feed its broker watch,
        and delivery reports) without waiting: the gateway calls it every 0.1 s, so an idle gateway
        neither piles statistics up nor misses a producer left with no broker."""
        self.producer.poll(0)

    def close(self) -> None:
        self.producer.flush(5)

    def _budget(self, context: grpc.aio.ServicerContext, cap: float) -> float:
        left = context.time_remaining()
        return cap if left is None else max(0.0, min(cap, left))

    # ---- submit --------------------------------------------------------------------------
    async def submit(self, kind: str, req: Any, context: grpc.aio.ServicerContext) -> common_pb2.TaskResponse:
        if kind not in kinds():
            raise FailedPrecondition(f"job kind {kind!r} is not installed in this gateway; known kinds: "
                                     f"{', '.join(sorted(kinds()))}")
        ident = caller(self.auth, context)
        try:
            spec = json.loads(req.spec_json or "{}")
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"spec_json is not valid JSON: {exc}") from None
        if not isinstance(spec, dict):
            raise InvalidArgument("spec_json must be a JSON object")
        if req.deadline_s < 0:
            raise InvalidArgument("deadline_s must be >= 0")
        deadline = self.clock.now_ns() + int(req.deadline_s * 1e9) if req.deadline_s > 0 else None
        job_id = req.job_id or new_job_id()
        cmd = make_command("SUBMIT", job_id, kind, spec, priority=req.priority, deadline_ns=deadline,
                           requester=ident.name, bypass_cache=bool(getattr(req, "bypass_cache", False)), clock=self.clock)
        check_submit(cmd, self.clock.now_ns())  # JobSpecError -> INVALID_ARGUMENT naming the field
        if req.job_id and self.view.get(job_id) is not None:
            raise ApiAlreadyExists(f"job {job_id} already exists")
        await self._produce(cmd, self._budget(context, self.settings.kafka.connect_timeout_s))
        return common_pb2.TaskResponse(job_id=job_id, kind=kind, requester=ident.name)

    async def _produce(self, cmd: dict[str, Any], timeout_s: float) -> None:
        tracker = DeliveryTracker()
        value = self.codec.encode(COMMAND_SCHEMA, cmd)
        self.producer.produce(self.cfg.commands_topic, key=cmd["job_id"].encode(), value=value,
                              timestamp=cmd["ts_event"] // 1_000_000, on_delivery=tracker)
        left = await asyncio.get_running_loop().run_in_executor(None, self.producer.flush, timeout_s)
        if left:
            raise Unavailable(f"the command was not acknowledged by the Kafka broker within {timeout_s:.1f} s "
                              f"({self.settings.kafka.bootstrap_servers} down?); it may still be delivered")
        if tracker.errors:
            raise Unavailable(f"the Kafka broker refused the command: {'; '.join(tracker.errors)}")

    # ---- reads ---------------------------------------------------------------------------
    async def entry(self, job_id: str, context: grpc.aio.ServicerContext, kind: str | None = None) -> JobEntry:
        """The job's entry; NOT_FOUND when the topics have no such job (after catching up with them)."""
        if not job_id:
            raise InvalidArgument("job_id is required")
        e = self.view.get(job_id)
        if e is None or e.latest is None:
            if not await self.view.sync(self._budget(context, self.settings.kafka.connect_timeout_s)):
                if e is None:
                    raise Unavailable("cannot read cmd.jobs/job.status from the Kafka broker: " + (self.view.error or "timeout"))
            e = self.view.get(job_id)
        if e is None:
            raise NotFound(f"no job {job_id!r}")
        ident = caller(self.auth, context)
        if not ident.admin and e.requester and e.requester != ident.name:
            raise PermissionDenied(f"job {job_id} belongs to another requester")
        if kind and e.kind and e.kind != kind:
            raise InvalidArgument(f"job {job_id} is a {e.kind!r} job, not {kind!r}")
        return e

    async def status(self, job_id: str, context: grpc.aio.ServicerContext, kind: str | None = None) -> common_pb2.TaskStatus:
        e = await self.entry(job_id, context, kind)
        if e.latest is None:  # submitted, not yet taken by a control app
            return common_pb2.TaskStatus(job_id=job_id, kind=e.kind, state=common_pb2.JOB_STATE_UNSPECIFIED,
                                         message="submitted; no control app has taken it yet", ts_event_ns=e.submitted_ns)
        return status_message(e.latest)

    async def history(self, req: common_pb2.HistoryRequest, context: grpc.aio.ServicerContext,
                      kind: str) -> common_pb2.HistoryResponse:
        ident = caller(self.auth, context)
        requester = req.requester or ident.name
        if requester != ident.name and not ident.admin:
            raise PermissionDenied(f"only admins may read the jobs of {requester!r}")
        size = req.page_size or 100
        if not 1 <= size <= 1000:
            raise InvalidArgument("page_size must be within 1..1000")
        try:
            start = int(req.page_token) if req.page_token else 0
            if start < 0:
                raise ValueError
        except ValueError:
            raise InvalidArgument(f"page_token {req.page_token!r} is not one this service gave") from None
        await self.view.sync(self._budget(context, self.settings.kafka.connect_timeout_s))
        jobs = self.view.history(None if ident.admin and not req.requester else requester, req.kind or kind)
        page = jobs[start:start + size]
        out = []
        for e in page:
            if e.latest is not None:
                out.append(status_message(e.latest))
            else:
                out.append(common_pb2.TaskStatus(job_id=e.job_id, kind=e.kind, ts_event_ns=e.submitted_ns,
                                                 message="submitted; no control app has taken it yet"))
        nxt = str(start + size) if start + size < len(jobs) else ""
        return common_pb2.HistoryResponse(jobs=out, next_page_token=nxt, total=len(jobs))

    async def watch(self, job_id: str, context: grpc.aio.ServicerContext) -> AsyncIterator[common_pb2.TaskStatus]:
        await self.entry(job_id, context)
        w, history = self.view.watch(job_id)
        try:
            last_ts = -1
            for st in history:
                last_ts = int(st.get("ts_event") or 0)
                yield status_message(st)
                if st["state"] in FINAL:
                    return
            while True:
                st = await w.queue.get()
                if st.get("overflow"):
                    raise ResourceExhausted(f"the watch of job {job_id} fell more than {self.view.watch_queue_max} "
                                            "statuses behind and was closed; watch again to resume from the history")
                if int(st.get("ts_event") or 0) < last_ts:
                    continue
                yield status_message(st)
                if st["state"] in FINAL:
                    return
        finally:
            self.view.unwatch(w)

    async def results(self, job_id: str, kind: str, context: grpc.aio.ServicerContext) -> AsyncIterator[common_pb2.ResultRecord]:
        """The job's records on ``results.<kind>`` (read once the job is final)."""
        e = await self.entry(job_id, context, kind)
        if e.latest is None or e.latest["state"] not in FINAL:
            raise FailedPrecondition(f"job {job_id} is not final yet (watch it first)")
        topic = f"results.{kind}"
        loop = asyncio.get_running_loop()
        records = await loop.run_in_executor(None, self._read_results, topic, job_id, e.submitted_ns)
        for r in records:
            yield r

    def _read_results(self, topic: str, job_id: str, since_ns: int) -> list[common_pb2.ResultRecord]:
        c = make_consumer(self.settings.kafka, f"mystocks-gateway-results-{uuid.uuid4().hex[:8]}",
                          **{"isolation.level": "read_committed"})
        try:
            md = c.list_topics(topic, timeout=self.settings.kafka.connect_timeout_s)
            if topic not in md.topics or md.topics[topic].error is not None:
                return []
            parts = sorted(md.topics[topic].partitions)
            starts = c.offsets_for_times([TopicPartition(topic, p, max(0, since_ns // 1_000_000 - 60_000)) for p in parts],
                                         timeout=10)
            ends = {p: watermarks(c, TopicPartition(topic, p), 10)[1] for p in parts}
            first = {tp.partition: tp.offset for tp in starts if tp.offset >= 0}
            out: list[common_pb2.ResultRecord] = []
            key = job_id.encode()

            def on_msg(m: Any) -> None:
                if m.key() == key and m.value() is not None:
                    rec = self.codec.decode(m.value())
                    out.append(common_pb2.ResultRecord(topic=topic, partition=m.partition(), offset=m.offset(),
                                                       json=json.dumps(rec, default=_json_default, sort_keys=True)))

            if not read_until(c, topic, first, {p: ends[p] for p in first}, on_msg, 60.0):
                raise Unavailable(f"could not read {topic} within 60 s")
            return out
        finally:
            c.close()


def _json_default(o: Any) -> Any:
    if isinstance(o, (bytes, bytearray)):
        return o.hex()
    return str(o)


class ApiAlreadyExists(InvalidArgument):
    code = grpc.StatusCode.ALREADY_EXISTS


def _metrics(result: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a result, flattened with ``.`` (booleans excluded)."""
    out: dict[str, float] = {}
    if isinstance(result, dict):
        for k, v in result.items():
            out.update(_metrics(v, f"{prefix}{k}."))
    elif isinstance(result, (int, float)) and not isinstance(result, bool):
        out[prefix[:-1]] = float(result)
    return out


def model_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """``model``, ``version`` and ``metrics`` of a training result.

    A ``train`` result (see :mod:`mystocks_gpu.processors.training.train_job`) gives the published
    model's name and version, its out-of-sample metrics (``overall``: ``ic_mean``, ``rank_ic_mean``,
    ``mse``, ...) unprefixed and its long-short backtest's stats as ``long_short.<stat>``; any other
    result (another kind configured as ``gateway.training_kind``) gives its numeric leaves."""
    model = result.get("model")
    if isinstance(model, dict) and isinstance(result.get("overall"), dict):
        return {"model": str(model.get("name") or ""), "version": int(model.get("version") or 0),
                "metrics": {**_metrics(result["overall"]), **_metrics(result.get("long_short") or {}, "long_short.")}}
    return {"model": str(model or result.get("name") or ""), "version": int(result.get("version") or 0),
            "metrics": _metrics(result.get("metrics", result))}


class BacktestServicer(backtest_pb2_grpc.BacktestServiceServicer):
    def __init__(self, ops: JobOps) -> None:
        self.ops, self.kind = ops, ops.gw.backtest_kind

    @mapped
    async def SubmitBacktestTask(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await self.ops.submit(self.kind, request, context)

    @mapped
    async def QueryBacktestResult(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return common_pb2.JobResult(status=await self.ops.status(request.job_id, context, self.kind))

    @mapped
    async def GetBacktestHistory(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await self.ops.history(request, context, self.kind)

    @mapped
    async def WatchTask(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:  # noqa: N802
        async for st in self.ops.watch(request.job_id, context):
            yield st

    @mapped
    async def StreamBacktestResults(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:  # noqa: N802
        async for r in self.ops.results(request.job_id, self.kind, context):
            yield r


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):
    def __init__(self, ops: JobOps) -> None:
        self.ops, self.kind = ops, ops.gw.training_kind

    @mapped
    async def SubmitTrainingJob(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await self.ops.submit(self.kind, request, context)

    @mapped
    async def QueryTrainingProgress(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await self.ops.status(request.job_id, context, self.kind)

    @mapped
    async def GetModelMetrics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        e = await self.ops.entry(request.job_id, context, self.kind)
        st = e.latest
        if st is None or st["state"] != "succeeded":
            raise FailedPrecondition(f"job {request.job_id} has no metrics: it is {st['state'] if st else 'not started'}")
        result = st.get("result") or {}
        return training_pb2.ModelMetrics(job_id=request.job_id, **model_metrics(result),
                                         result_json=json.dumps(result, sort_keys=True))


def _job_servicer(base: type, kind_attr: str, submit: str, query: str, stream: str) -> type:
    """A Factor/Risk/Execution servicer class: submit, query, stream results of one kind."""

    class _S(base):  # type: ignore[misc, valid-type]
        def __init__(self, ops: JobOps) -> None:
            self.ops, self.kind = ops, getattr(ops.gw, kind_attr)

    async def _submit(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.ops.submit(self.kind, request, context)

    async def _query(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return common_pb2.JobResult(status=await self.ops.status(request.job_id, context, self.kind))

    async def _stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for r in self.ops.results(request.job_id, self.kind, context):
            yield r

    setattr(_S, submit, mapped(_submit))
    setattr(_S, query, mapped(_query))
    setattr(_S, stream, mapped(_stream))
    _S.__name__ = _S.__qualname__ = base.__name__.replace("Servicer", "") + "Impl"
    return _S


FactorServicer = _job_servicer(workloads_pb2_grpc.FactorServiceServicer, "factor_kind", "SubmitFactorJob",
                               "QueryFactorJob", "StreamFactorResults")
RiskServicer = _job_servicer(workloads_pb2_grpc.RiskServiceServicer, "risk_kind", "SubmitRiskJob", "QueryRiskJob",
                             "StreamRiskResults")
ExecutionServicer = _job_servicer(workloads_pb2_grpc.ExecutionServiceServicer, "execution_kind", "ScheduleOrder",
                                  "QueryExecutionJob", "StreamExecutionResults")
