"""Shared builders of the execution tests: market parameters, random orders, a volume profile.

Reference values in the tests are computed here by hand from the documented formulas (the
Almgren-Chriss calibration of the paper), never through the package's own derivations."""

from __future__ import annotations

import math

import numpy as np

from mystocks_gpu.gpu_ops.execution import MarketParams, ParentOrder, VolumeProfile

NS = 1_000_000_000
DAY_S = 23_400.0
#: 2023-11-14 14:30 UTC (a 09:30 New York open in winter): a session start
T0 = 1_699_972_200 * NS
OPEN_S = 14.5 * 3600.0


def params(symbol: str = "AAA", price: float = 50.0, sigma: float = 0.02, adv: float = 2e6,
           spread: float = 0.05, lot: int = 100, **kw: object) -> MarketParams:
    return MarketParams(symbol, price, sigma, adv, spread, lot, **kw)  # type: ignore[arg-type]


def hand_constants(p: MarketParams, day_s: float = DAY_S, eta_part: float = 0.01,
                   gamma_frac: float = 0.1) -> dict[str, float]:
    """sigma_abs (currency/sqrt(s)), eta, gamma, eps by the AC (2000) rules of thumb."""
    return {
        "sigma_abs": p.sigma * p.price / math.sqrt(day_s),
        "eta": p.eta if p.eta is not None else p.spread / (eta_part * p.adv / day_s),
        "gamma": p.gamma if p.gamma is not None else p.spread / (gamma_frac * p.adv),
        "eps": p.spread / 2,
    }


def u_shaped_profile(n: int = 78, bucket_s: float = 300.0) -> VolumeProfile:
    x = np.linspace(-1, 1, n)
    return VolumeProfile(tuple((1.0 + 2.0 * x * x).tolist()), bucket_s, OPEN_S)


def random_orders(rng: np.random.Generator, n: int, symbols: list[str], now: int,
                  strategies: tuple[str, ...] = ("ac", "twap", "vwap", "pov")) -> list[ParentOrder]:
    out = []
    for i in range(n):
        out.append(ParentOrder(
            order_id=f"o{i}", symbol=symbols[int(rng.integers(len(symbols)))],
            side=("buy", "sell")[i % 2], quantity=int(rng.integers(1, 400_000)),
            end_ns=now + int(rng.integers(60, 4 * 3600)) * NS,
            start_ns=now + int(rng.integers(-600, 600)) * NS if i % 3 == 0 else 0,
            strategy=strategies[i % len(strategies)],
            risk_aversion=float(10 ** rng.uniform(-9, -4)) if i % 5 else None,
            max_participation=float(rng.uniform(0.02, 1.0)) if i % 4 else None,
            pov_rate=float(rng.uniform(0.01, 0.5)) if i % 7 == 0 else None,
            limit_price=float(rng.uniform(10, 100)) if i % 6 == 0 else None,
        ))
    return out


def random_params(rng: np.random.Generator, n: int, profile: VolumeProfile | None) -> list[MarketParams]:
    return [MarketParams(f"S{i}", float(rng.uniform(5, 500)), float(rng.uniform(0.005, 0.05)),
                         float(10 ** rng.uniform(4.5, 7.5)), float(rng.uniform(0.01, 0.2)),
                         int(rng.choice([1, 10, 100])), profile=profile if i % 2 else None)
            for i in range(n)]
