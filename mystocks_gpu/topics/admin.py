"""Create, verify and describe catalog topics on a broker; report drift from the catalog."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from mystocks_gpu.infra.clock import SYSTEM_CLOCK, Clock
from mystocks_gpu.infra.config import KafkaConfig
from mystocks_gpu.infra.exceptions import BrokerUnreachable
from mystocks_gpu.infra.kafka_clients import RDKAFKA_LOG
from mystocks_gpu.topics.catalog import TopicSpec

#: broker-reported retention for compacted topics is irrelevant; only these configs are compared
COMPARED = ("cleanup.policy", "retention.ms", "retention.bytes", "max.message.bytes")

log = logging.getLogger(__name__)


def _usable(md: object) -> bool:
    """A topic's metadata with no error and a leader for each of its partitions."""
    parts = getattr(md, "partitions", None)
    return (md is not None and getattr(md, "error", None) is None and bool(parts)
            and all(p.leader >= 0 for p in parts.values()))  # type: ignore[union-attr]


@dataclass(frozen=True)
class TopicReport:
    """Outcome of ``create`` for one topic: ``created``, ``exists`` or ``drift`` (with details; a
    created topic the broker's metadata did not show yet when ``create`` stopped waiting says so)."""

    name: str
    status: str
    details: str = ""


def make_admin(cfg: KafkaConfig) -> AdminClient:
    """An AdminClient that fails fast (``cfg.connect_timeout_s``) when no broker answers, with
    librdkafka's logs routed to Python logging (so ``--log-format json`` keeps stderr JSON)."""
    return AdminClient(cfg.client_config(**{"socket.connection.setup.timeout.ms": int(cfg.connect_timeout_s * 1000),
                                            "logger": RDKAFKA_LOG}))


def ensure_reachable(admin: AdminClient, cfg: KafkaConfig) -> dict[str, object]:
    """Topic metadata; :class:`BrokerUnreachable` within ``connect_timeout_s`` when down."""
    try:
        return admin.list_topics(timeout=cfg.connect_timeout_s).topics
    except KafkaException as exc:
        raise BrokerUnreachable(
            f"no Kafka broker answered at {cfg.bootstrap_servers} within {cfg.connect_timeout_s:.0f} s "
            f"({exc.args[0].str() if exc.args else exc}); is the stack up? try: mystocks-gpu stack up"
        ) from None


#: the pause (s) between two metadata requests while a created topic is not visible yet
VISIBLE_POLL_S = 0.05


class TopicAdmin:
    """Idempotent topic management against one cluster."""

    def __init__(self, cfg: KafkaConfig, clock: Clock = SYSTEM_CLOCK) -> None:
        self.cfg = cfg
        self.clock = clock
        self.admin = make_admin(cfg)

    def existing(self) -> dict[str, int]:
        """name -> partition count of every topic on the broker."""
        topics = ensure_reachable(self.admin, self.cfg)
        return {name: len(md.partitions) for name, md in topics.items()}  # type: ignore[attr-defined]

    def _described(self, names: Iterable[str]) -> dict[str, dict[str, str | None]]:
        """Every config of each topic as the broker reports it (default or set): one DescribeConfigs."""
        resources = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in names]
        if not resources:
            return {}
        return {res.name: {k: e.value for k, e in fut.result(timeout=self.cfg.connect_timeout_s).items()}
                for res, fut in self.admin.describe_configs(resources, request_timeout=self.cfg.connect_timeout_s).items()}

    def configs(self, names: Iterable[str]) -> dict[str, dict[str, str]]:
        """Current topic configs (only the ones in :data:`COMPARED`)."""
        return {name: {k: v for k, v in conf.items() if k in COMPARED and v is not None}
                for name, conf in self._described(names).items()}

    def config_value(self, name: str, key: str) -> str | None:
        """One config of one topic as the broker reports it (default or set), ``None`` if unknown."""
        return self._described([name])[name].get(key)

    def set_configs(self, name: str, configs: dict[str, str]) -> None:
        """Set topic configs in place (incremental: the topic's other settings stay as they are)."""
        res = ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=[
            ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in configs.items()])
        for fut in self.admin.incremental_alter_configs([res], request_timeout=self.cfg.connect_timeout_s).values():
            fut.result(timeout=self.cfg.connect_timeout_s * 3)

    def max_message_bytes(self, names: Iterable[str], producer_max: int = 1_000_000) -> dict[str, int]:
        """Largest record (bytes) each topic accepts: the smaller of its ``max.message.bytes`` and the
        producer's ``message.max.bytes`` (librdkafka default 1,000,000)."""
        return {name: min(int(conf.get("max.message.bytes") or producer_max), producer_max)
                for name, conf in self._described(names).items()}

    def drift(self, spec: TopicSpec, partitions: int, config: dict[str, str]) -> list[str]:
        """Human-readable differences between a live topic and its spec."""
        diffs = []
        if partitions != spec.partitions:
            diffs.append(f"partitions {partitions} != wanted {spec.partitions}")
        for k, want in spec.config().items():
            have = config.get(k)
            if k == "retention.ms" and spec.cleanup == "compact":
                continue
            if have is not None and have != want:
                diffs.append(f"{k}={have} != catalog {want}")
        return diffs

    def create(self, specs: Iterable[TopicSpec]) -> list[TopicReport]:
        """Create missing topics; report existing ones as ``exists`` or ``drift``. Never alters."""
        specs = list(specs)
        live = self.existing()
        missing = [s for s in specs if s.name not in live]
        reports: dict[str, TopicReport] = {}
        if missing:
            futures = self.admin.create_topics(
                [NewTopic(s.name, num_partitions=s.partitions, replication_factor=1, config=s.config()) for s in missing],
                request_timeout=self.cfg.connect_timeout_s,
            )
            for name, fut in futures.items():
                try:
                    fut.result(timeout=self.cfg.connect_timeout_s * 3)
                    reports[name] = TopicReport(name, "created")
                except KafkaException as exc:
                    if exc.args and exc.args[0].name() == "TOPIC_ALREADY_EXISTS":
                        reports[name] = TopicReport(name, "exists")
                    else:
                        raise
            wait_s = self.cfg.connect_timeout_s * 3
            late = self.await_visible([n for n, r in reports.items() if r.status == "created"], wait_s)
            for name in late:  # created, but a client asking now may still be told "unknown topic"
                reports[name] = TopicReport(name, "created", f"not in the broker's metadata after {wait_s:g} s")
            if late:
                log.warning("created topic(s) not yet in the broker's metadata after %g s (clients may see "
                            "them as unknown for a moment): %s", wait_s, ", ".join(late))
        present = [s for s in specs if s.name in live]
        confs = self.configs([s.name for s in present])
        for s in present:
            diffs = self.drift(s, live[s.name], confs.get(s.name, {}))
            reports[s.name] = TopicReport(s.name, "drift" if diffs else "exists", "; ".join(diffs))
        return [reports[s.name] for s in specs]

    def await_visible(self, names: list[str], timeout_s: float) -> list[str]:
        """Wait up to ``timeout_s`` until the broker's metadata shows each topic of ``names`` with a
        leader for every partition; returns the ones it still does not show. A create is answered
        once the controller has the topic, and the broker applies it a moment later: a client
        asking in between (a worker checking its outputs, a test) was told the topic is unknown."""
        pending = set(names)
        until = self.clock.monotonic() + timeout_s
        while pending:
            try:
                topics = self.admin.list_topics(timeout=max(0.1, until - self.clock.monotonic())).topics
            except KafkaException:
                topics = {}
            pending = {n for n in pending if not _usable(topics.get(n))}
            if not pending or self.clock.monotonic() >= until:
                break
            self.clock.sleep(VISIBLE_POLL_S)
        return sorted(pending)

    def add_partitions(self, name: str, total: int) -> None:
        """Grow a topic to ``total`` partitions (used by ops and tests)."""
        for fut in self.admin.create_partitions([NewPartitions(name, total)]).values():
            fut.result(timeout=self.cfg.connect_timeout_s * 3)

    def delete(self, names: Iterable[str]) -> None:
        """Delete topics (tests and ``topics delete``); missing ones are ignored."""
        names = [n for n in names if n in self.existing()]
        if names:
            for fut in self.admin.delete_topics(names, operation_timeout=30).values():
                fut.result(timeout=60)

    def describe(self, name: str) -> dict[str, object]:
        """Partitions (leader, replicas, low/high watermarks are not included) and configs of one topic."""
        topics = ensure_reachable(self.admin, self.cfg)
        md = topics.get(name)
        if md is None:
            return {"name": name, "exists": False}
        parts = {p: {"leader": pm.leader, "replicas": list(pm.replicas)} for p, pm in md.partitions.items()}  # type: ignore[attr-defined]
        return {"name": name, "exists": True, "partitions": len(parts), "partition_detail": parts,
                "config": self.configs([name]).get(name, {})}
