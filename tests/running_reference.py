"""Independent reference for the built-in running aggregate (tests only)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def running_aggregate(symbol: np.ndarray, seq: np.ndarray, price: np.ndarray) -> pd.DataFrame:
    """Per-symbol running count / sum / last of ``price`` in arrival order.

    Sums are sequential (``np.cumsum`` per group), as a running sum adds: pandas' groupby cumsum
    compensates rounding and would differ in the last ulp.
    """
    df = pd.DataFrame({"symbol": symbol, "seq": seq, "price": price})
    g = df.groupby("symbol", sort=False)["price"]
    return pd.DataFrame({"symbol": df["symbol"], "seq": df["seq"], "count": g.cumcount() + 1,
                         "sum": g.transform(lambda s: np.cumsum(s.to_numpy())), "last": df["price"]})
