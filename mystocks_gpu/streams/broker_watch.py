"""A client that knows no broker any more is given the bootstrap servers again.

librdkafka (2.10 to at least 2.15, issue confluentinc/librdkafka#5301, fix proposed in #5303 and not
merged) removes every broker that a Metadata answer does not list. A broker that was frozen or
partitioned past its session comes back fenced by the KRaft controller for a few milliseconds, and a
Metadata request that it answers in that window lists no broker and the topics asked for: the client
decommissions the only broker it knew. Its KIP-1102 re-bootstrap timer
(``metadata.recovery.rebootstrap.trigger.ms``, ``[kafka] rebootstrap_s``) is started only when a
Metadata request is sent and stopped by any answer; with no broker left no request is sent, so it
never fires, and the client stays without a broker for good: an exactly-once worker's abort timed out
8 times in a row (30 s each) and the worker was killed (``bench/HISTORY.md``, 2026-12-07 13:17).

:class:`BrokerWatch` reads the client's statistics (``statistics.interval.ms`` = ``rebootstrap_s``):
when no broker is left that the client was given (``configured``) or learned from metadata
(``learned``), only its internal and logical ones, it adds the bootstrap servers back through
librdkafka's public ``rd_kafka_brokers_add`` (the C extension's ``add_brokers``): what the
re-bootstrap would have done. The statistics are served by the client's ``poll()`` / ``consume()``,
which the worker calls every loop and between the retries of a transactional call.

A client that is never polled (one kept for queries: watermarks, end offsets) gets no statistics
(they would pile up in its queue): :func:`nudged_consumer` gives it a watch whose
:meth:`BrokerWatch.nudge` its owner calls when a query fails.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import Consumer, Producer

from mystocks_gpu.infra.clock import SYSTEM_CLOCK, Clock
from mystocks_gpu.infra.config import KafkaConfig
from mystocks_gpu.infra.kafka_clients import make_consumer, make_producer

log = logging.getLogger(__name__)

#: the broker sources of librdkafka's statistics (``brokers.*.source``) that can serve requests
SERVING_SOURCES = ("configured", "learned")

#: how librdkafka writes those sources into its statistics (no spaces): a document holding one is healthy
_SERVING_MARKERS = tuple(f'"source":"{source}"' for source in SERVING_SOURCES)

C = TypeVar("C")

#: ``(client, "host:port,...") -> brokers the client has of the list`` (the extension's ``add_brokers``)
AddBrokers = Callable[[Any, str], int]


def serving_brokers(stats_json: str) -> int | None:
    """The brokers of a librdkafka statistics document (JSON, ``STATISTICS.md``) that are configured
    or learned (its internal and logical ones left out); None when the document has no ``brokers``
    object or is not JSON."""
    try:
        doc = json.loads(stats_json)
    except ValueError:
        return None
    brokers = doc.get("brokers") if isinstance(doc, dict) else None
    if not isinstance(brokers, dict):
        return None
    return sum(1 for b in brokers.values() if isinstance(b, dict) and b.get("source") in SERVING_SOURCES)


class BrokerWatch:
    """One client's watch (module docstring). :meth:`config` gives the client settings that feed
    it; :meth:`attach` the client once built. ``add_brokers`` None: the extension is not built, and
    the watch only logs what it would do."""

    def __init__(self, kafka: KafkaConfig, add_brokers: AddBrokers | None, name: str,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.kafka, self.add_brokers, self.name, self.clock = kafka, add_brokers, name, clock
        self.client: Any = None
        #: times the bootstrap servers were added back
        self.readded = 0
        self._last_add = -1e18

    def config(self) -> dict[str, Any]:
        """librdkafka settings for the watched client: statistics every ``kafka.rebootstrap_s``."""
        return {"statistics.interval.ms": self.kafka.rebootstrap_ms, "stats_cb": self.on_stats}

    def attach(self, client: Any) -> Any:
        """Watch ``client`` (a confluent-kafka Producer or Consumer built with :meth:`config`); returns it."""
        self.client = client
        return client

    def on_stats(self, stats_json: str) -> None:
        """librdkafka's statistics callback: add the bootstrap servers back when no configured or
        learned broker is left (at most once per ``rebootstrap_s``)."""
        if any(marker in stats_json for marker in _SERVING_MARKERS):
            return  # the common case, without parsing: librdkafka writes ``"source":"learned"`` exactly so
        n = serving_brokers(stats_json)
        if n is None or n > 0:
            return
        self._add("no configured or learned broker in its statistics")

    def nudge(self) -> bool:
        """A call of the client timed out: add the bootstrap servers back whatever its statistics
        say (they are served only by ``poll()``, which a retry loop around a blocking call such as
        ``committed()`` or ``abort_transaction()`` does not reach). Harmless when the client still
        knows its broker: librdkafka drops the bootstrap broker again at the next Metadata answer.
        At most once per ``rebootstrap_s``; True when the servers were added. Without the extension
        it does nothing (only the statistics, which can tell, say that the client is stuck)."""
        return self.add_brokers is not None and self._add("a call timed out")

    def _add(self, why: str) -> bool:
        now = self.clock.monotonic()
        if self.client is None or now - self._last_add < self.kafka.rebootstrap_s:
            return False
        self._last_add = now
        if self.add_brokers is None:
            log.warning("librdkafka knows no broker any more and the C extension is not built to add the bootstrap "
                        "servers back; the client recovers only when restarted", extra={"fields": {"client": self.name}})
            return False
        self.add_brokers(self.client, self.kafka.bootstrap_servers)
        self.readded += 1
        log.warning("librdkafka may know no broker any more (librdkafka#5301): bootstrap servers added back",
                    extra={"fields": {"client": self.name, "why": why, "bootstrap_servers": self.kafka.bootstrap_servers}})
        return True


def broker_watch(kafka: KafkaConfig, name: str, clock: Clock = SYSTEM_CLOCK) -> BrokerWatch:
    """A :class:`BrokerWatch` adding brokers through the C extension (only logging without it)."""
    from mystocks_gpu.streams.columnar_io import load_extension

    ext, _ = load_extension()
    return BrokerWatch(kafka, ext.add_brokers if ext is not None else None, name, clock)


def _watched(kafka: KafkaConfig, name: str, clock: Clock, keep: dict[str, BrokerWatch] | None,
             make: Callable[[dict[str, Any]], C]) -> C:
    """``make(settings)`` with the settings of a new watch added, the client attached to it; the
    watch kept in ``keep[name]`` when given."""
    watch = broker_watch(kafka, name, clock)
    if keep is not None:
        keep[name] = watch
    client = make(watch.config())
    watch.attach(client)
    return client


def watched_producer(kafka: KafkaConfig, name: str, *, clock: Clock = SYSTEM_CLOCK,
                     keep: dict[str, BrokerWatch] | None = None, **extra: Any) -> Producer:
    """:func:`~mystocks_gpu.infra.kafka_clients.make_producer` with a :class:`BrokerWatch` (the
    caller must ``poll()`` it regularly: the statistics wait in its queue until then); ``keep``:
    where to keep the watch, under ``name`` (for :meth:`BrokerWatch.nudge`)."""
    return _watched(kafka, name, clock, keep, lambda watch_conf: make_producer(kafka, **extra, **watch_conf))


def watched_consumer(kafka: KafkaConfig, group_id: str, name: str, *, clock: Clock = SYSTEM_CLOCK,
                     keep: dict[str, BrokerWatch] | None = None, **extra: Any) -> Consumer:
    """:func:`~mystocks_gpu.infra.kafka_clients.make_consumer` with a :class:`BrokerWatch` (served
    by its ``poll()`` / ``consume()``); ``keep`` as for :func:`watched_producer`."""
    return _watched(kafka, name, clock, keep, lambda watch_conf: make_consumer(kafka, group_id, **extra, **watch_conf))


def _nudged(kafka: KafkaConfig, name: str, clock: Clock, client: C) -> tuple[C, BrokerWatch]:
    """``client`` (built without statistics) and a watch attached to it, for its owner to nudge."""
    watch = broker_watch(kafka, name, clock)
    return watch.attach(client), watch


def nudged_consumer(kafka: KafkaConfig, group_id: str, name: str, *, clock: Clock = SYSTEM_CLOCK,
                    **extra: Any) -> tuple[Consumer, BrokerWatch]:
    """A consumer kept for queries and never polled (so without statistics), and its watch: call
    ``watch.nudge()`` when a query of it fails (module docstring)."""
    return _nudged(kafka, name, clock, make_consumer(kafka, group_id, **extra))


def nudged_producer(kafka: KafkaConfig, name: str, *, clock: Clock = SYSTEM_CLOCK,
                    **extra: Any) -> tuple[Producer, BrokerWatch]:
    """A producer that is polled only when it sends, seldom (so without statistics), and its watch:
    call ``watch.nudge()`` when a flush leaves records undelivered (module docstring)."""
    return _nudged(kafka, name, clock, make_producer(kafka, **extra))
