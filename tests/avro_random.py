"""Random records for any Avro schema (tests only): edge values included."""

from __future__ import annotations

import math
import random
from typing import Any

EDGE_LONGS = [0, 1, -1, 63, 64, -64, -65, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63)]
EDGE_INTS = [0, 1, -1, 2**31 - 1, -(2**31)]
EDGE_DOUBLES = [0.0, -0.0, 1.5, -1e308, 1e-308, math.inf, -math.inf, math.nan]


def random_value(t: Any, rng: random.Random, named: dict[str, Any]) -> Any:
    if isinstance(t, str) and t in named:
        t = named[t]
    if isinstance(t, list):
        return random_value(rng.choice(t), rng, named)
    if isinstance(t, dict):
        kind = t["type"]
        if kind == "record":
            named[t["name"]] = t
            if "namespace" in t:
                named[f"{t['namespace']}.{t['name']}"] = t
            return {f["name"]: random_value(f["type"], rng, named) for f in t["fields"]}
        if kind == "enum":
            named[t["name"]] = t
            return rng.choice(t["symbols"])
        if kind == "array":
            return [random_value(t["items"], rng, named) for _ in range(rng.randint(0, 4))]
        if kind == "map":
            return {random_string(rng): random_value(t["values"], rng, named) for _ in range(rng.randint(0, 4))}
        return random_value(kind, rng, named)
    if t == "null":
        return None
    if t == "boolean":
        return rng.random() < 0.5
    if t == "int":
        return rng.choice(EDGE_INTS) if rng.random() < 0.2 else rng.randint(-(2**31), 2**31 - 1)
    if t == "long":
        return rng.choice(EDGE_LONGS) if rng.random() < 0.2 else rng.randint(-(2**63), 2**63 - 1)
    if t in ("double", "float"):
        v = rng.choice(EDGE_DOUBLES) if rng.random() < 0.2 else rng.uniform(-1e6, 1e6)
        return v if t == "double" or not math.isfinite(v) or abs(v) < 3e38 else 1.0
    if t == "string":
        return random_string(rng)
    if t == "bytes":
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 8)))
    raise ValueError(f"unsupported type {t!r}")


def random_string(rng: random.Random) -> str:
    alphabet = "ABCXYZabc019 _-.é中€"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10)))
