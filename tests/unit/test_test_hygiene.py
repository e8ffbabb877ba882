"""The test suite's own rules that a reader cannot see from one test: random data is seeded with
values that do not change between runs (``hash()`` of a str is salted per process by
PYTHONHASHSEED, so a seed from it gives different data, and different failures, on every run)."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
HASH_SEED = re.compile(r"(Random|default_rng|seed|RandomState)\s*\([^)\n]*\bhash\(")


def test_no_rng_is_seeded_from_hash() -> None:
    bad = [f"{p.relative_to(TESTS)}:{i}: {ln.strip()}"
           for p in sorted(TESTS.rglob("*.py"))
           for i, ln in enumerate(p.read_text().splitlines(), 1) if HASH_SEED.search(ln)]
    assert not bad, "seeds from hash() change with PYTHONHASHSEED; use zlib.crc32(name.encode()):\n" + "\n".join(bad)
