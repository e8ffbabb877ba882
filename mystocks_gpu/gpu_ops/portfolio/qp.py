"""The canonical batched QP that every portfolio objective is lowered to, and its scaling.

For each problem ``b`` of a batch of ``B`` problems in ``N`` variables::

    minimise    1/2 x'(p_b P_b)x + q'x        (p_b = ``p_mult[b]``, so P can be a covariance
                                             shared with the caller, never copied)
    subject to  l <= A x <= u            (m general rows; l == u marks an equality)
                lb <= x <= ub            (variable bounds; +-inf allowed)
                sum_{i in S_k} |x_i - c_ki| <= r_k   for each L1 ball k (turnover, leverage)

Arrays live on one backend (NumPy or CuPy); shapes: ``P (B, N, N)``, ``p_mult (B,)``, ``q (B, N)``, ``A (B, m, N)``,
``l, u (B, m)``, ``lb, ub (B, N)``; a ball has a mask ``(N,)`` shared by the batch, a centre
``(B, N)`` and a radius ``(B,)`` (+inf = no constraint for that problem).

Scaling (:func:`scale`): the objective is multiplied by ``c_b = 1 / mean(diag p_b P_b)`` (or
``1 / max|q_b|`` when ``P_b`` is zero) and each general row by ``1 / max_j |A_bij|``; variables
are not scaled, so bounds and balls keep their units.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

Array = Any  # numpy.ndarray or cupy.ndarray


@dataclass(frozen=True)
class L1Ball:
    """``sum_{i: mask_i} |x_i - center_i| <= radius``; ``name`` appears in infeasibility reports."""

    name: str
    mask: Array  # (N,) bool, same for every problem of the batch
    center: Array  # (B, N)
    radius: Array  # (B,)

    def take(self, idx: Array) -> L1Ball:
        return L1Ball(self.name, self.mask, self.center[idx], self.radius[idx])


@dataclass(frozen=True)
class QPBatch:
    """B quadratic programs of the same shape (see module docstring). ``row_names`` (length m)
    name the general rows for infeasibility reports; ``obj_scale`` / ``row_scale`` are 1 until
    :func:`scale` is applied."""

    P: Array
    q: Array
    A: Array
    l: Array  # noqa: E741 - the conventional name
    u: Array
    lb: Array
    ub: Array
    balls: tuple[L1Ball, ...] = ()
    row_names: tuple[str, ...] = ()
    p_mult: Array | None = None  # (B,); None = 1
    obj_scale: Array | None = None  # (B,)
    row_scale: Array | None = None  # (B, m)

    def pm(self) -> Array:
        """``p_mult`` as an array ``(B,)``."""
        if self.p_mult is not None:
            return self.p_mult
        return array_module(self.q).ones(self.q.shape[0])

    @property
    def n_problems(self) -> int:
        return int(self.q.shape[0])

    @property
    def n_vars(self) -> int:
        return int(self.q.shape[1])

    @property
    def n_rows(self) -> int:
        return int(self.A.shape[1])

    def take(self, idx: Array, with_p: bool = True) -> QPBatch:
        """The sub-batch at indices ``idx`` (an integer array on the same backend). With
        ``with_p=False`` the (large) ``P`` is shared, not gathered: the caller then addresses it
        through its own row index."""
        return QPBatch(
            self.P[idx] if with_p else self.P, self.q[idx], self.A[idx], self.l[idx], self.u[idx],
            self.lb[idx], self.ub[idx], tuple(b.take(idx) for b in self.balls), self.row_names,
            None if self.p_mult is None else self.p_mult[idx],
            None if self.obj_scale is None else self.obj_scale[idx],
            None if self.row_scale is None else self.row_scale[idx],
        )


def array_module(a: Array) -> Any:
    """``numpy`` or ``cupy``, whichever owns ``a``."""
    if isinstance(a, np.ndarray):
        return np
    import cupy

    return cupy


def scale(qp: QPBatch) -> QPBatch:
    """The scaled problem (see module docstring); ``obj_scale``/``row_scale`` record the factors."""
    xp = array_module(qp.q)
    pm = qp.pm()
    diag = xp.diagonal(qp.P, axis1=1, axis2=2)
    dmean = xp.mean(xp.abs(diag), axis=1) * xp.abs(pm)
    qmax = xp.max(xp.abs(qp.q), axis=1) if qp.n_vars else xp.zeros_like(dmean)
    base = xp.where(dmean > 0, dmean, xp.where(qmax > 0, qmax, 1.0))
    c = 1.0 / base
    if qp.n_rows:
        rmax = xp.max(xp.abs(qp.A), axis=2)
        rs = xp.where(rmax > 0, 1.0 / xp.where(rmax > 0, rmax, 1.0), 1.0)
    else:
        rs = xp.ones((qp.n_problems, 0))
    return replace(
        qp,
        p_mult=pm * c,
        q=qp.q * c[:, None],
        A=qp.A * rs[:, :, None],
        l=qp.l * rs,
        u=qp.u * rs,
        obj_scale=c,
        row_scale=rs,
    )


def objective(qp: QPBatch, x: Array) -> Array:
    """``1/2 x'Px + q'x`` per problem ``(B,)`` (in the units of ``qp``)."""
    xp = array_module(x)
    px = xp.einsum("bij,bj->bi", qp.P, x) * qp.pm()[:, None]
    return 0.5 * xp.sum(x * px, axis=1) + xp.sum(qp.q * x, axis=1)


def violation(qp: QPBatch, x: Array) -> Array:
    """Largest constraint violation per problem ``(B,)``: rows, bounds and balls (units of ``qp``;
    for a scaled batch the rows are in scaled units)."""
    xp = array_module(x)
    v = xp.zeros(x.shape[0])
    if qp.n_rows:
        ax = xp.einsum("bmn,bn->bm", qp.A, x)
        v = xp.maximum(v, xp.max(xp.maximum(qp.l - ax, ax - qp.u), axis=1))
    if qp.n_vars:
        v = xp.maximum(v, xp.max(xp.maximum(qp.lb - x, x - qp.ub), axis=1))
    for ball in qp.balls:
        d = xp.sum(xp.abs(x - ball.center) * ball.mask, axis=1)
        v = xp.maximum(v, xp.where(xp.isfinite(ball.radius), d - ball.radius, -xp.inf))
    return xp.maximum(v, 0.0)
