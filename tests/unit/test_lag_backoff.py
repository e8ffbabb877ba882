"""``ConsumerLag``'s schedule without a broker: the refresh interval, one request for every unknown
committed offset, and the back-off while that request fails (the broker side is
``tests/integration/test_consumer_lag.py``). The client is a stand-in that answers from a table and
counts the requests: what is tested is when the gauge asks, not what Kafka answers."""

from __future__ import annotations

from typing import Any

import numpy as np
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from mystocks_gpu.infra.clock import ManualClock
from mystocks_gpu.streams.consumer_lag import MAX_BACKOFF_S, QUERY_TIMEOUT_S, ConsumerLag
from mystocks_gpu.streams.stream_metrics import RuntimeMetrics

TOPIC = "t"


class _Client:
    """Owns partitions 0..3 of ``TOPIC``: watermarks (low 5, high 9) and, when up, no commit."""

    def __init__(self) -> None:
        self.up = True
        self.requests: list[tuple[list[int], float]] = []

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(TOPIC, p) for p in range(4)]

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool) -> tuple[int, int]:
        assert cached
        return 5, 9

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self.requests.append(([tp.partition for tp in tps], timeout))
        if not self.up:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        return [TopicPartition(TOPIC, tp.partition, -1001) for tp in tps]


class _Protocol:
    """What ``ConsumerLag`` uses of ``CommitProtocol``: ``committed`` and ``learn_committed``
    (the real one's rule: none committed is kept as OFFSET_BEGINNING, -2)."""

    def __init__(self, client: _Client) -> None:
        self.client = client
        self.committed: dict[int, int] = {0: 7}

    def learn_committed(self, partitions: list[int], timeout_s: float) -> None:
        for tp in self.client.committed([TopicPartition(TOPIC, p) for p in partitions], timeout_s):
            self.committed[tp.partition] = tp.offset if tp.offset >= 0 else -2


def _lags(m: RuntimeMetrics) -> dict[int, Any]:
    return {p: m.registry.get_sample_value("mystocks_stream_consumer_lag", {"processor": "x", "partition": str(p)})
            for p in range(4)}


def test_one_request_for_the_unknown_then_none_and_the_gauges_count_from_the_log_start() -> None:
    clock, client = ManualClock(), _Client()
    proto, m = _Protocol(client), RuntimeMetrics("x")
    lag = ConsumerLag(TOPIC, m, clock, interval_s=2.0)
    lag.refresh(client, proto)  # type: ignore[arg-type]
    assert client.requests == [([1, 2, 3], QUERY_TIMEOUT_S)]
    assert _lags(m) == {0: 2.0, 1: 4.0, 2: 4.0, 3: 4.0}  # 9 - 7 committed; 9 - 5 the log start
    for _ in range(10):
        clock.advance(2.0)
        lag.refresh(client, proto)  # type: ignore[arg-type]
    assert len(client.requests) == 1
    proto.committed.pop(3)  # re-assigned: the protocol forgot it, and it is asked for alone
    clock.advance(2.0)
    lag.refresh(client, proto)  # type: ignore[arg-type]
    assert client.requests[1] == ([3], QUERY_TIMEOUT_S)


def test_the_interval_is_the_setting() -> None:
    clock, client = ManualClock(), _Client()
    proto, m = _Protocol(client), RuntimeMetrics("x")
    proto.committed.update({1: 9, 2: 9, 3: 9})
    lag = ConsumerLag(TOPIC, m, clock, interval_s=0.5)
    lag.refresh(client, proto)  # type: ignore[arg-type]
    proto.committed[1] = 8
    clock.advance(0.49)
    lag.refresh(client, proto)  # type: ignore[arg-type]
    assert _lags(m)[1] == 0.0  # not refreshed before the interval
    clock.advance(0.01)
    lag.refresh(client, proto)  # type: ignore[arg-type]
    assert _lags(m)[1] == 1.0


def test_failed_requests_back_off_doubling_to_the_cap_then_reset() -> None:
    clock, client = ManualClock(), _Client()
    client.up = False
    proto, m = _Protocol(client), RuntimeMetrics("x")
    lag = ConsumerLag(TOPIC, m, clock, interval_s=1.0)
    asked_at: list[float] = []
    t0 = clock.monotonic()
    for _ in range(200):  # refresh every 0.5 s for 100 s
        before = len(client.requests)
        lag.refresh(client, proto)  # type: ignore[arg-type]
        if len(client.requests) > before:
            asked_at.append(clock.monotonic() - t0)
        clock.advance(0.5)
    gaps = list(np.diff(asked_at))
    assert gaps[:5] == [2.0, 4.0, 8.0, 16.0, 30.0] and set(gaps[5:]) == {MAX_BACKOFF_S}
    assert lag.failed_queries == len(asked_at) and _lags(m)[1] is None  # no gauge from no answer
    assert _lags(m)[0] == 2.0  # the known ones keep theirs
    client.up = True
    clock.advance(MAX_BACKOFF_S)
    lag.refresh(client, proto)  # type: ignore[arg-type]
    assert _lags(m)[1] == 4.0 and lag._backoff == 1.0
