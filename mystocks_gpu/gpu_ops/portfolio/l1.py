"""Euclidean projection onto a (masked) L1 ball, batched, as one array program on ``xp``.

For ``v (B, N)``, ``mask (N,)`` and radii ``r (B,)``: the projection of ``v`` restricted to the
masked coordinates onto ``{d: sum |d_i| <= r_b}`` (unmasked coordinates are 0). Sort-based
(Duchi et al. 2008): with ``u`` = ``|v|`` sorted descending and ``k`` the largest index with
``u_k > (sum_{j<=k} u_j - r) / k``, ``theta = (sum_{j<=k} u_j - r) / k`` and ``d = sign(v)
max(|v| - theta, 0)``; ``theta = 0`` when ``v`` is inside the ball, ``r = +inf`` leaves it
unchanged, ``r = 0`` gives 0. The soft-threshold produces exact zeros, which the polish step reads
as kinks.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any


def project_l1(xp: ModuleType, v: Any, mask: Any, r: Any) -> Any:
    """The projection described in the module docstring (``xp`` = numpy or cupy)."""
    B, N = v.shape
    a = xp.abs(v) * mask[None, :]
    s1 = xp.sum(a, axis=1)
    u = -xp.sort(-a, axis=1)
    css = xp.cumsum(u, axis=1) - r[:, None]
    k = xp.arange(1, N + 1, dtype=v.dtype)
    cond = u * k[None, :] > css
    kk = xp.maximum(xp.sum(cond, axis=1), 1)
    theta = xp.take_along_axis(css, (kk - 1)[:, None], axis=1)[:, 0] / kk
    theta = xp.where(s1 > r, theta, 0.0)
    theta = xp.where(r <= 0, xp.inf, theta)
    return xp.sign(v) * xp.maximum(xp.abs(v) - theta[:, None], 0.0) * mask[None, :]
