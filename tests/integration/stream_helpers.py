"""Helpers for runtime integration tests: topics, input, worker subprocesses, read-back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mystocks_gpu.data.synthetic_ticks import SyntheticMarket, generate, symbol_names
from mystocks_gpu.data.topic_reader import ConsumedRecord, read_topic
from mystocks_gpu.infra.clock import Clock
from mystocks_gpu.infra.config import KafkaConfig, Settings
from mystocks_gpu.infra.kafka_clients import make_producer, produce_all
from mystocks_gpu.schemas.batch_codec import BatchEncoder
from mystocks_gpu.streams.broker_watch import watched_producer
from mystocks_gpu.streams.commit_protocol import CommitProtocol
from mystocks_gpu.streams.runtime_config import RuntimeConfig
from mystocks_gpu.topics import TopicSpec
from mystocks_gpu.topics.admin import TopicAdmin
from tests.conftest import ROOT
from tests.running_reference import running_aggregate


@dataclass
class Topics:
    """An isolated input/output/DLQ topic set and consumer group for one test."""

    input: str
    output: str
    dlq: str
    group: str


def make_topics(settings: Settings, unique: str, partitions: int = 4) -> Topics:
    t = Topics(f"t.in.{unique}", f"t.out.{unique}", f"t.in.{unique}.dlq", f"g.{unique}")
    TopicAdmin(settings.kafka).create([
        TopicSpec(t.input, "symbol", "mystocks.md.Tick", partitions=partitions, dlq=False),
        TopicSpec(t.output, "symbol", "mystocks.streams.RunningAggregate", partitions=partitions, dlq=False),
        TopicSpec(t.dlq, "symbol", None, partitions=1, dlq=False),
    ])
    return t


def synthetic(n: int, symbols: int = 64, seed: int = 1) -> tuple[dict[str, np.ndarray], list[str]]:
    """Synthetic tick columns and symbol names."""
    return generate(SyntheticMarket(n_symbols=symbols, seed=seed), n), symbol_names(symbols, seed)


def produce_ticks(settings: Settings, topic: str, cols: dict[str, np.ndarray], names: list[str],
                  values: list[bytes] | None = None) -> int:
    """Produce tick columns (keys = symbols, timestamps = event time)."""
    return produce_all(make_producer(settings.kafka), topic, iter(tick_items(cols, names, values)))


def tick_items(cols: dict[str, np.ndarray], names: list[str], values: list[bytes] | None = None
               ) -> list[tuple[bytes, bytes, int]]:
    """``(key = symbol, value, timestamp_ms = event time)`` per tick, for :func:`produce_all`
    (``values``: already encoded ticks, else the columns encoded)."""
    vals = values if values is not None else BatchEncoder("mystocks.md.Tick").encode(cols, names)
    keys = [names[i].encode() for i in cols["sym"].tolist()]
    return list(zip(keys, vals, (cols["ts"] // 1_000_000).tolist(), strict=True))


#: worker flags for a commit every ``--commit-interval-ms`` throughout: catch-up commits off (on by
#: default, a worker behind a backlog commits once a second), for tests whose kills or injected faults
#: are spread on the assumption of frequent commits
EVERY_INTERVAL = ("--catch-up-commit-interval-ms", "0")


def start_paced(settings: Settings, topic: str, items: list[tuple[bytes, bytes, int]], rate: float) -> Future[int]:
    """Produce ``items`` at about ``rate`` records/s from a thread; the future gives the delivered
    count (so a worker started on the first items is still mid-stream for ``len(items) / rate`` s).
    The producer is watched, as the live feed's is: it outlives a broker freeze (librdkafka#5301)."""
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(produce_all, watched_producer(settings.kafka, "paced producer"), topic, iter(items), rate=rate)
    finally:
        pool.shutdown(wait=False)  # the submitted production runs on; nothing else will be


def summaries(out: str) -> list[dict[str, Any]]:
    """The JSON run summaries a worker printed on stdout (one per run)."""
    return [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]


def start_worker(t: Topics, worker_id: str, *extra: str, idle_exit: float = 6.0) -> subprocess.Popen[str]:
    """``mystocks-gpu run aggregate`` on the test topics, in its own process group."""
    cmd = [sys.executable, "-m", "mystocks_gpu.cli", "--log-level", "INFO", "run", "aggregate", "--group", t.group,
           "--worker-id", worker_id, "--input-topic", t.input, "--output-topic", t.output,
           "--idle-exit", str(idle_exit), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ})


def kill9(p: subprocess.Popen[str]) -> None:
    """SIGKILL a worker (no chance to commit or clean up)."""
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(30)


def finish(p: subprocess.Popen[str], timeout: float = 240) -> str:
    """Wait for a worker to exit cleanly; returns its stdout (stderr, when a pipe, is in the failure).
    A worker still running after ``timeout`` s is killed, and the failure shows its last log lines."""
    return finish_with_log(p, timeout)[0]


def finish_with_log(p: subprocess.Popen[str], timeout: float = 240) -> tuple[str, str]:
    """:func:`finish`, returning the worker's stdout and its log (stderr; empty when not piped), so a
    test can show the log beside a failed assertion on the summary."""
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate(timeout=30)
        raise AssertionError(f"worker still running after {timeout:g} s (killed)\n"
                             f"{(err or '(stderr not piped)')[-6000:]}") from None
    assert p.returncode == 0, f"worker exit {p.returncode}\n{(err or '(stderr not piped)')[-3000:]}"
    return out, err or ""


def bare_protocol(producer: Any, rt: RuntimeConfig, *, consumer: Any = None, topic: str = "unused",
                  partition_counts: dict[str, int] | None = None, metrics: Any = None,
                  clock: Clock | None = None) -> CommitProtocol:
    """A :class:`CommitProtocol` around real clients with no processor and no state: the sending,
    fencing and recovery paths on their own (``consumer`` None: nothing read or committed)."""
    return CommitProtocol(producer=producer, consumer=consumer, topic=topic, processor=None, states=None,
                          rt=rt, metrics=metrics, clock=clock or Clock(), drop_input=lambda: None,
                          transactional_id="unused", max_bytes={}, partition_counts=partition_counts)


def read_finished(cfg: KafkaConfig, topic: str, **kw: Any) -> list[ConsumedRecord]:
    """Every read_committed record of a topic whose writers have stopped: each partition up to the
    end offset it has when reading starts (not "until nothing arrived for a while", which stops
    early when a loaded broker pauses; the idle timeout is a 60 s backstop). ``kw``: more
    :func:`read_topic` options (``decode``, ``codec``)."""
    return list(read_topic(cfg, topic, stop_at_end=True, idle_timeout_s=60, **kw))


def read_outputs(settings: Settings, topic: str) -> pd.DataFrame:
    """All records of a finished output topic (:func:`read_finished`) as a frame."""
    return pd.DataFrame([dict(r.value, _p=r.partition, _o=r.offset) for r in read_finished(settings.kafka, topic)])


def reference(cols: dict[str, np.ndarray], names: list[str], keep: np.ndarray | None = None) -> pd.DataFrame:
    """Uninterrupted running count/sum/last per symbol (sequential sums, like the processor)."""
    sym = np.asarray(names)[cols["sym"]]
    sel = slice(None) if keep is None else keep
    return running_aggregate(sym[sel], cols["seq"][sel], cols["price"][sel])


def assert_at_least_once(got: pd.DataFrame, ref: pd.DataFrame) -> None:
    """Nothing lost: every input (symbol, seq) has an output, and each symbol's last running count is
    at least the reference's (a reprocessed record may repeat, and count again)."""
    missing = set(zip(ref["symbol"], ref["seq"], strict=True)) - set(zip(got["symbol"], got["seq"], strict=True))
    assert not missing, f"{len(missing)} inputs without an output, e.g. {sorted(missing)[:3]}"
    last = got.sort_values(["_p", "_o"]).groupby("symbol")["count"].last()
    want = ref.groupby("symbol")["count"].max()
    assert (last.reindex(want.index) >= want).all(), pd.concat([last, want], axis=1)


def assert_exactly_once_equal(got: pd.DataFrame, ref: pd.DataFrame) -> None:
    """One output per input (no loss, no duplicate) and every running value equal to the reference."""
    # a failure names the duplicated outputs with their partitions and offsets (the next step of the
    # open 60,001-of-60,000 case, bench/HISTORY.md 2026-12-07 13:06)
    order = [c for c in ("symbol", "seq", "_p", "_o") if c in got.columns]  # _p/_o: read_outputs' coordinates
    twice = got[got.duplicated(["symbol", "seq"], keep=False)].sort_values(order) if len(got) else got
    shown = twice.head(20).to_string() if len(twice) else "none"
    assert len(got) == len(ref), f"{len(got)} outputs for {len(ref)} inputs; duplicated outputs:\n{shown}"
    dup = got.duplicated(["symbol", "seq"]).sum()
    assert dup == 0, f"{dup} duplicated outputs:\n{shown}"
    a = got.set_index(["symbol", "seq"])[["count", "sum", "last"]].sort_index()
    b = ref.set_index(["symbol", "seq"])[["count", "sum", "last"]].sort_index()
    pd.testing.assert_frame_equal(a, b, check_exact=True, check_dtype=False)


def wait_for(pred, timeout: float, every: float = 0.2) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    return False


def output_high_watermark(settings: Settings, topic: str) -> int:
    """Sum of a topic's high watermarks (grows when a worker produces, committed or not).

    The probe reads uncommitted: a ``read_committed`` consumer (librdkafka's default) answers the
    last stable offset, which grows only at commits, and a kill timed on it came after a commit
    (with 1-second catch-up transactions, sometimes after the last one)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "hw-probe",
                  "isolation.level": "read_uncommitted"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


def committed_total(settings: Settings, group: str, topic: str, partitions: int | None = None) -> int:
    """Sum of a group's committed offsets on ``topic`` (progress made durable).

    The probe reads with ``isolation.level=read_uncommitted`` so the OffsetFetch does not ask for
    *stable* offsets: with read_committed (librdkafka's default) the broker answers
    UNSTABLE_OFFSET_COMMIT while a SIGKILLed worker's transaction is still open, and the fetch times
    out instead of returning the last committed position.
    """
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    transient = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                 KafkaError.COORDINATOR_NOT_AVAILABLE}
    c = Consumer(settings.kafka.client_config(**{
        "group.id": group, "enable.auto.commit": False, "isolation.level": "read_uncommitted"}))
    try:
        if partitions is None:
            parts = list(c.list_topics(topic, timeout=10).topics[topic].partitions)
        else:
            parts = list(range(partitions))
        deadline = time.monotonic() + 30
        while True:
            try:
                return sum(max(tp.offset, 0) for tp in c.committed([TopicPartition(topic, p) for p in parts], timeout=15))
            except KafkaException as e:
                # a fresh broker creates __consumer_offsets on the first group lookup; its
                # coordinator answers NOT_COORDINATOR / LOAD_IN_PROGRESS until it has loaded
                if e.args[0].code() not in transient or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        c.close()
