"""The goals of issue 18 next to what ``bench/features_e2e.py`` measured, with Kafka alone and the
worker's own hop at the same quantile beside each. Not a public API."""

from __future__ import annotations

import argparse
from typing import Any

from mystocks_gpu.streams.runtime_config import AT_LEAST_ONCE, EXACTLY_ONCE

#: the issue's goals (p99 / p99.9 in ms; throughput ratios); exactly-once: commit interval + 10 ms
GOAL_ALO_P99_HIGH, GOAL_ALO_P999_HIGH, GOAL_ALO_P99_LOW, GOAL_EOS_SLACK = 10.0, 25.0, 5.0, 10.0
GOAL_RATIO_QUIX = 10.0


def goals(args: argparse.Namespace, lat: dict[str, Any], r_quix: float | None,
          floor: dict[float, dict[str, Any]] | None = None, floor_eos: dict[float, dict[str, Any]] | None = None,
          floor2: dict[float, dict[str, Any]] | None = None) -> list[tuple[Any, ...]]:
    """(goal, target, measured, met, Kafka 1 hop, Kafka 2 hops, worker hop) rows for the goals this
    run measured. "Kafka 1 hop" is the same quantile of :func:`_latency_floor.run_floor` at the
    goal's rate (producer -> broker -> consumer); "Kafka 2 hops" the same through its relay, the
    pipeline's shape with no work (``floor2``; for the exactly-once goal ``floor_eos``: its
    transactional relay at the same commit interval); "worker hop" the same quantile of the measured
    run's own ingest -> output append hop (``in_worker``: what the worker adds, without the two Kafka
    hops around it; exactly-once: before the commit). Floors are keyed by rate."""
    rows: list[tuple[Any, ...]] = []
    floor, floor_eos, floor2 = floor or {}, floor_eos or {}, floor2 or {}

    def row(name: str, target: float, got: Any, lower_is_better: bool = True, alone: Any = None,
            two: Any = None, worker: Any = None) -> None:
        met = None if got is None else (got <= target if lower_is_better else got >= target)
        rows.append((name, target, got, "-" if met is None else ("yes" if met else "NO"), alone, two, worker))

    def hop(run: dict[str, Any], q: str) -> Any:
        return run.get("parts", {}).get("in_worker", {}).get(q)

    hi, lo = lat.get(AT_LEAST_ONCE, {}), lat.get(f"{AT_LEAST_ONCE}@{int(args.low_rate)}", {})
    eos = lat.get(EXACTLY_ONCE, {})
    f_hi, f_lo = floor.get(args.rate, {}), floor.get(args.low_rate, {})
    f2_hi, f2_lo = floor2.get(args.rate, {}), floor2.get(args.low_rate, {})
    if hi:
        row(f"ALO p99 ms @ {args.rate:,.0f}/s", GOAL_ALO_P99_HIGH, hi.get("p99_ms"), alone=f_hi.get("p99_ms"),
            two=f2_hi.get("p99_ms"), worker=hop(hi, "p99_ms"))
        row(f"ALO p99.9 ms @ {args.rate:,.0f}/s", GOAL_ALO_P999_HIGH, hi.get("p999_ms"), alone=f_hi.get("p999_ms"),
            two=f2_hi.get("p999_ms"), worker=hop(hi, "p999_ms"))
    if eos:
        row(f"EOS p99 ms @ {args.rate:,.0f}/s (commit {args.commit_interval_ms:g} ms + {GOAL_EOS_SLACK:g})",
            args.commit_interval_ms + GOAL_EOS_SLACK, eos.get("p99_ms"), two=floor_eos.get(args.rate, {}).get("p99_ms"),
            worker=hop(eos, "p99_ms"))
    if lo:
        row(f"ALO p99 ms @ {args.low_rate:,.0f}/s", GOAL_ALO_P99_LOW, lo.get("p99_ms"), alone=f_lo.get("p99_ms"),
            two=f2_lo.get("p99_ms"), worker=hop(lo, "p99_ms"))
    if r_quix is not None:
        row("throughput ours EOS / Quix", GOAL_RATIO_QUIX, r_quix, lower_is_better=False)
    return rows
