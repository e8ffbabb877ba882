"""Deliberate, reproducible failures inside the commit protocol, for fault-tolerance tests.

A plan such as ``"produce=0.02,offsets=0.05,commit=0.05;seed=7"`` makes the protocol raise an
abortable Kafka error (``txn_requires_abort``) at those stages with those probabilities: the real
transaction on the real broker is then aborted and the partitions rewound, exactly as after a
broker-side abort. Stages: ``begin``, ``produce``, ``offsets``, ``commit``; ``crash``, which raises a plain
``RuntimeError("injected crash")`` after a batch has replaced partition states (an unexpected bug);
``stall``, which blocks inside the open transaction for ``stall_s`` seconds (default 12; a GC
pause or a frozen host), so the coordinator times the transaction out and fences the producer;
and ``slow_commit``, which blocks as long at the start of a commit (a broker slow to answer it, a
host paused there), the commit then going on as usual.
Options after ``;``: ``seed=N``, ``stall_s=S``. Empty = off (default).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException

from mystocks_gpu.exceptions import ConfigError

STAGES = ("begin", "produce", "offsets", "commit", "crash", "stall", "slow_commit")
#: the stages that block for ``stall_s`` instead of raising
PAUSES = ("stall", "slow_commit")


@dataclass(frozen=True)
class FaultPlan:
    """Probability of an injected abortable error per protocol stage, and the RNG seed."""

    probabilities: tuple[tuple[str, float], ...] = ()
    seed: int = 0
    stall_s: float = 12.0

    @classmethod
    def parse(cls, spec: str) -> FaultPlan:
        """``"stage=p,stage=p;seed=N"``; :class:`ConfigError` names the bad part."""
        spec = spec.strip()
        if not spec:
            return cls()
        head, _, tail = spec.partition(";")
        seed, stall_s = 0, 12.0
        for opt in filter(None, (o.strip() for o in tail.split(";"))):
            key, _, val = opt.partition("=")
            key, val = key.strip(), val.strip()
            if key == "seed" and val.lstrip("-").isdigit():
                seed = int(val)
            elif key == "stall_s" and val.replace(".", "", 1).isdigit():
                stall_s = float(val)
            else:
                raise ConfigError(f"fault plan: expected ';seed=N' or ';stall_s=S', got {opt!r}")
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
        return cls(tuple(probs), seed, stall_s)

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
                if stage in PAUSES:
                    time.sleep(self.stall_s)
                    return
                raise KafkaException(KafkaError(KafkaError._FAIL, f"injected fault at {stage}", txn_requires_abort=True))

        return fault
