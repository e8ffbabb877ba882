"""Mode ``accounts`` of the ``optimize`` job: one portfolio per account of the ``positions`` topic,
all solved in one batch.

Each account's holdings are its record on ``spec.positions_topic`` (compacted, key = account,
Avro ``mystocks.risk.Positions``, decoded and validated as the risk processor does: see
:mod:`mystocks_gpu.processors.risk.positions`) that holds at the last bar: the latest record with
``ts_event`` <= that bar's time (ties: the later one in the topic); a tombstone before it closes
the account. Records that fail validation are skipped and counted in the result with their
reasons (they went to ``positions.dlq`` in the risk processor already).

Per account, with closes ``p`` (currency per unit) at the last bar:

- value ``V = sum_i q_i p_i`` (net market value of the holdings, currency); current weights
  ``w0_i = q_i p_i / V`` -- the ``turnover`` constraint is measured against them;
- limits from the record (null = the spec's constraint alone): ``concentration`` (largest
  ``|w_i|``, a fraction) tightens ``max_weight``; ``gross_exposure`` (currency) tightens
  ``leverage`` to ``gross_exposure / V``;
- trades: target quantities ``w_i V / p_i`` minus the held ones (units, per symbol).

An account is ``rejected`` (no weights, with the reason) when it has no record, holds symbols
outside the universe, or its value is not positive; the others are solved together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.risk import LIMIT_NAMES
from mystocks_gpu.processors.exceptions import JobSpecError
from mystocks_gpu.processors.portfolio.optimize_spec import OptimizeSpec
from mystocks_gpu.processors.risk.positions import PositionUpdate, decode_positions
from mystocks_gpu.schemas import AvroCodec
from mystocks_gpu.schemas.schema_store import SchemaStore

_CONC, _GROSS = LIMIT_NAMES.index("concentration"), LIMIT_NAMES.index("gross_exposure")


@dataclass(frozen=True)
class AccountBook:
    """The accounts as of one time: ``held`` {account: update}, ``rejected_records`` (reason per
    skipped record, at most 20 kept) and their count."""

    held: dict[str, PositionUpdate]
    rejected_records: list[str]
    n_rejected: int


def latest_positions(records: list[Any], codec: AvroCodec, as_of_ns: int) -> AccountBook:
    """The holdings of each account at ``as_of_ns`` from raw positions records (objects with
    ``partition, offset, key (bytes), value (bytes | None), timestamp_ms``)."""
    good, bad = decode_positions(records, codec, None)
    latest: dict[str, PositionUpdate] = {}
    for u in sorted((u for u in good if u.ts_event <= as_of_ns), key=lambda u: u.order):
        latest[u.account] = u
    held = {a: u for a, u in latest.items() if u.symbols is not None}
    return AccountBook(held, [f"{records[r.index].partition}:{records[r.index].offset} {r.message}"
                              for r in bad[:20]], len(bad))


def read_positions(kafka: Any, topic: str, as_of_ns: int, store: SchemaStore | None) -> AccountBook:
    """:func:`latest_positions` of the whole of ``topic`` (read to its end at the start)."""
    from mystocks_gpu.data.topic_reader import read_topic

    recs = [SimpleNamespace(partition=r.partition, offset=r.offset, timestamp_ms=r.timestamp_ms, value=r.raw,
                            key=None if r.key is None else r.key.encode())
            for r in read_topic(kafka, topic, decode=False, stop_at_end=True, idle_timeout_s=30.0)]
    return latest_positions(recs, AvroCodec(store), as_of_ns)


@dataclass(frozen=True)
class AccountProblem:
    """One account's inputs: value ``V`` (currency), current weights ``w0 (n,)``, quantities held
    ``qty (n,)`` in universe order, and the limits applied (None = not set)."""

    account: str
    value: float
    w0: np.ndarray
    qty: np.ndarray
    max_weight: float | None
    leverage: float | None


def account_problems(spec: OptimizeSpec, book: AccountBook, last_close: np.ndarray
                     ) -> tuple[list[AccountProblem], dict[str, str]]:
    """The accounts to solve (``spec.accounts`` or every open one, sorted) and the rejected ones
    with their reasons."""
    index = {s: i for i, s in enumerate(spec.universe)}
    names = list(spec.accounts) if spec.accounts else sorted(book.held)
    if not names:
        raise JobSpecError(f"optimize: no open account on {spec.positions_topic} at the last bar")
    ok: list[AccountProblem] = []
    rejected: dict[str, str] = {}
    for a in names:
        u = book.held.get(a)
        if u is None or u.symbols is None:
            rejected[a] = f"no holdings of account {a} on {spec.positions_topic} at the last bar"
            continue
        outside = [s for s, q in zip(u.symbols, u.qty.tolist(), strict=True) if s not in index and q != 0]
        if outside:
            rejected[a] = f"account {a} holds symbols outside the universe: {', '.join(sorted(outside)[:10])}"
            continue
        qty = np.zeros(len(index))
        for s, q in zip(u.symbols, u.qty.tolist(), strict=True):
            if s in index:
                qty[index[s]] = q
        mv = qty * last_close
        value = float(mv.sum())
        if not value > 0:
            rejected[a] = f"account {a} has a net market value of {value:.6g} (must be > 0 to size weights)"
            continue
        conc, gross = u.limits[_CONC], u.limits[_GROSS]
        mw = _tighter(spec.max_weight, None if math.isnan(conc) else conc)
        lev = _tighter(spec.leverage, None if math.isnan(gross) else gross / value)
        ok.append(AccountProblem(a, value, mv / value, qty, mw, lev))
    return ok, rejected


def _tighter(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def account_row_extra(p: AccountProblem, weights: list[float] | None, last_close: np.ndarray,
                      universe: list[str]) -> dict[str, Any]:
    """The account fields of a result row: value, current weights, the limits applied and the
    trades (target - held units per symbol, zero trades left out) when solved."""
    out: dict[str, Any] = {"account": p.account, "value": p.value, "current_weights": [float(x) for x in p.w0],
                           "max_weight": p.max_weight, "leverage": p.leverage}
    if weights is not None:
        target = np.asarray(weights) * p.value / last_close
        delta = target - p.qty
        out["trades"] = {s: float(d) for s, d in zip(universe, delta.tolist(), strict=True) if abs(d) > 1e-9}
    return out
