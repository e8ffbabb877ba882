"""Walk-forward splits by time with a purge gap and an embargo.

The time axis is the sorted distinct ``dates`` of the rows (any sortable int64: a trading day, a
bar's ``ts_event``...), indexed 0..D-1. With T = ``test_dates``, P = ``purge_dates``,
E = ``embargo_dates`` and K = ``n_splits``:

* Test windows are K blocks of T dates laid from the end of the data backwards, each followed by
  E embargoed dates (except the last): window k covers ``[s_k, e_k)`` with ``e_k = s_k + T`` and
  ``s_{k+1} = e_k + E``, and ``e_{K-1} = D``.
* Split k trains on the dates ``[lo_k, s_k - P)``, where ``lo_k = 0`` (``scheme="expanding"``) or
  ``max(0, s_k - P - train_dates)`` (``scheme="rolling"``: a window of ``train_dates`` dates,
  counted before exclusions).
* Purge: P >= ``label_horizon`` (enforced) so that, with one bar per date, no training label
  (which ends ``label_horizon`` bars after its row) reaches the test window. When ``label_end``
  is given (``forward_labels``), training rows whose label ends at or after the test window's
  first date are also dropped, which makes the purge exact for irregular bars and gaps.
* Embargo: the E dates right after each test window are quarantined: never tested, and never
  trained on by any split. (Walk-forward trains only on the past, so the embargo matters for the
  later splits whose training span covers earlier test windows: rows serially correlated with an
  evaluated window's end do not feed the models evaluated after it.)
* Training rows and test rows of a split never overlap, and test windows never overlap.

Raises :class:`TrainingDataError` when the data has too few dates for the layout (each split
needs at least ``min_train_dates`` training dates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.gpu_ops.models.exceptions import ModelError, TrainingDataError

SCHEMES = ("expanding", "rolling")


class WalkForwardConfigError(ConfigError, ModelError):
    """A walk-forward setting is of the wrong type or out of range."""


def _pos_int(name: str, v: Any, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise WalkForwardConfigError(f"walk-forward setting {name!r} must be an int >= {lo}, got {v!r}")


@dataclass(frozen=True)
class WalkForwardConfig:
    """Split layout (see the module docstring). Defaults: 5 splits of 20 test dates, a 1-bar
    label horizon, purge = the horizon, no embargo, expanding training windows."""

    n_splits: int = 5
    test_dates: int = 20
    label_horizon: int = 1
    purge_dates: int | None = None
    embargo_dates: int = 0
    scheme: str = "expanding"
    train_dates: int | None = None
    min_train_dates: int = 1

    def __post_init__(self) -> None:
        _pos_int("n_splits", self.n_splits, 1)
        _pos_int("test_dates", self.test_dates, 1)
        _pos_int("label_horizon", self.label_horizon, 1)
        if self.purge_dates is None:
            object.__setattr__(self, "purge_dates", self.label_horizon)
        _pos_int("purge_dates", self.purge_dates, 0)
        assert self.purge_dates is not None
        if self.purge_dates < self.label_horizon:
            raise WalkForwardConfigError(
                f"walk-forward 'purge_dates' ({self.purge_dates}) must be >= the label horizon "
                f"({self.label_horizon}) so that no training label overlaps a test window")
        _pos_int("embargo_dates", self.embargo_dates, 0)
        if self.scheme not in SCHEMES:
            raise WalkForwardConfigError(f"walk-forward 'scheme' must be one of {', '.join(SCHEMES)}; "
                                         f"got {self.scheme!r}")
        if self.scheme == "rolling":
            _pos_int("train_dates", self.train_dates, 1)
        elif self.train_dates is not None:
            raise WalkForwardConfigError("walk-forward 'train_dates' applies to scheme='rolling' only "
                                         "(expanding windows start at the first date)")
        _pos_int("min_train_dates", self.min_train_dates, 1)

    @property
    def purge(self) -> int:
        assert self.purge_dates is not None
        return self.purge_dates


@dataclass(frozen=True)
class Split:
    """One walk-forward split: row indices (sorted int64, into the input arrays) and the date
    range of each side (first and last date value, inclusive)."""

    index: int
    train: np.ndarray
    test: np.ndarray
    train_first: int
    train_last: int
    test_first: int
    test_last: int


def window_starts(n_dates: int, cfg: WalkForwardConfig) -> list[int]:
    """Date index ``s_k`` of each test window's first date, oldest first."""
    t, e, k = cfg.test_dates, cfg.embargo_dates, cfg.n_splits
    return [n_dates - (k - i) * t - (k - 1 - i) * e for i in range(k)]


def walk_forward_splits(dates: Any, cfg: WalkForwardConfig,
                        label_end: Any = None) -> list[Split]:
    """The splits of rows dated ``dates`` (n,) under ``cfg``; ``label_end`` (n,), in the units
    of ``dates``, enables the exact label purge."""
    dates = np.asarray(dates)
    if dates.ndim != 1 or dates.shape[0] == 0:
        raise TrainingDataError(f"dates must be a non-empty 1-D array; got shape {dates.shape}")
    if label_end is not None:
        label_end = np.asarray(label_end)
        if label_end.shape != dates.shape:
            raise TrainingDataError(f"label_end must have the shape of dates {dates.shape}; got {label_end.shape}")
    u, di = np.unique(dates, return_inverse=True)
    n_dates = len(u)
    starts = window_starts(n_dates, cfg)
    need = cfg.purge + cfg.min_train_dates + cfg.n_splits * cfg.test_dates + (cfg.n_splits - 1) * cfg.embargo_dates
    if starts[0] - cfg.purge < cfg.min_train_dates:
        raise TrainingDataError(
            f"walk-forward needs at least {need} distinct dates (min_train {cfg.min_train_dates} + purge "
            f"{cfg.purge} + {cfg.n_splits} x {cfg.test_dates} test + embargoes); the data has {n_dates}")
    quarantined = np.zeros(n_dates, dtype=bool)
    for s in starts[:-1]:
        quarantined[s + cfg.test_dates:s + cfg.test_dates + cfg.embargo_dates] = True
    out = []
    for k, s in enumerate(starts):
        hi = s - cfg.purge
        lo = 0 if cfg.scheme == "expanding" else max(0, hi - (cfg.train_dates or 0))
        train_dates = np.zeros(n_dates, dtype=bool)
        train_dates[lo:hi] = True
        train_dates &= ~quarantined
        n_train_dates = int(train_dates.sum())
        if n_train_dates < cfg.min_train_dates:
            raise TrainingDataError(f"walk-forward split {k} has {n_train_dates} training dates, fewer "
                                    f"than min_train_dates={cfg.min_train_dates}")
        train_mask = train_dates[di]
        if label_end is not None:
            train_mask &= label_end < u[s]
        test_mask = (di >= s) & (di < s + cfg.test_dates)
        train = np.flatnonzero(train_mask)
        if train.size == 0:
            raise TrainingDataError(f"walk-forward split {k} has no training rows after the label purge")
        tr_d = u[di[train]]
        out.append(Split(k, train, np.flatnonzero(test_mask), tr_d.min().item(), tr_d.max().item(),
                         u[s].item(), u[s + cfg.test_dates - 1].item()))
    return out
