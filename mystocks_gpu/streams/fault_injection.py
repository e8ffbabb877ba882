"""Deliberate, reproducible failures inside the commit protocol, for fault-tolerance tests.

A plan such as ``"produce=0.02,offsets=0.05,commit=0.05;seed=7"`` makes the protocol raise an
abortable Kafka error (``txn_requires_abort``) at those stages with those probabilities: the real
transaction on the real broker is then aborted and the partitions rewound, exactly as after a
broker-side abort. Stages: ``begin``, ``produce``, ``offsets``, ``commit``; and ``crash``, which raises a plain
``RuntimeError("injected crash")`` after a batch has replaced partition states (an unexpected bug).
Empty = off (default).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException

from mystocks_gpu.exceptions import ConfigError

STAGES = ("begin", "produce", "offsets", "commit", "crash")


@dataclass(frozen=True)
class FaultPlan:
    """Probability of an injected abortable error per protocol stage, and the RNG seed."""

    probabilities: tuple[tuple[str, float], ...] = ()
    seed: int = 0

    @classmethod
    def parse(cls, spec: str) -> FaultPlan:
        """``"stage=p,stage=p;seed=N"``; :class:`ConfigError` names the bad part."""
        spec = spec.strip()
        if not spec:
            return cls()
        head, _, tail = spec.partition(";")
        seed = 0
        if tail:
            key, _, val = tail.partition("=")
            if key.strip() != "seed" or not val.strip().lstrip("-").isdigit():
                raise ConfigError(f"fault plan: expected ';seed=N', got {tail!r}")
            seed = int(val)
        probs = []
        for part in filter(None, (p.strip() for p in head.split(","))):
            stage, _, val = part.partition("=")
            stage = stage.strip()
            if stage not in STAGES:
                raise ConfigError(f"fault plan: unknown stage {stage!r} (stages: {', '.join(STAGES)})")
            try:
                p = float(val)
            except ValueError:
                raise ConfigError(f"fault plan: probability of {stage} must be a number, got {val!r}") from None
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"fault plan: probability of {stage} must be within 0..1, got {p}")
            probs.append((stage, p))
        return cls(tuple(probs), seed)

    def hook(self) -> Callable[[str], None] | None:
        """A ``fault(stage)`` callable for :class:`~mystocks_gpu.streams.commit_protocol.CommitProtocol`
        (None when the plan is empty)."""
        if not self.probabilities:
            return None
        rng = random.Random(self.seed)
        table = dict(self.probabilities)

        def fault(stage: str) -> None:
            p = table.get(stage, 0.0)
            if p > 0.0 and rng.random() < p:
                if stage == "crash":
                    raise RuntimeError("injected crash")
                raise KafkaException(KafkaError(KafkaError._FAIL, f"injected fault at {stage}", txn_requires_abort=True))

        return fault
