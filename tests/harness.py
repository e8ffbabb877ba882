"""Run any processor over in-memory batches, no broker: for tests and notebooks.

:func:`run_batches` feeds raw framed values through ``decode`` -> ``process`` exactly as the worker
does for one partition (state threaded across batches, DLQ rejects collected), optionally
round-tripping the state through its changelog serialisation between batches, which must not
change any output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mystocks_gpu.schemas.symbols import SymbolTable
from mystocks_gpu.streams.processor import Outputs, Processor, Rejected, process_isolating


@dataclass
class HarnessResult:
    """Concatenated outputs per topic, rejects (by global input index) and the final state."""

    outputs: Outputs = field(default_factory=Outputs)
    rejected: list[Rejected] = field(default_factory=list)
    state: Any = None
    symbols: SymbolTable = field(default_factory=SymbolTable)


def cut(values: Sequence[bytes | None], sizes: Iterable[int]) -> list[list[bytes | None]]:
    """Split ``values`` into consecutive batches of the given sizes (the last takes the rest)."""
    out, pos = [], 0
    for s in sizes:
        if pos >= len(values):
            break
        out.append(list(values[pos:pos + s]))
        pos += s
    if pos < len(values):
        out.append(list(values[pos:]))
    return out


def run_batches(processor: Processor[Any], batches: Iterable[Sequence[bytes | None]], partition: int = 0,
                roundtrip_state: bool = False, ingest_ns: int = 0, flush: bool = False) -> HarnessResult:
    """Process ``batches`` of framed values in order as one partition; see module docstring."""
    res = HarnessResult()
    state = processor.initial_state()
    changelog: dict[bytes, bytes] = {}  # a compacted changelog: latest value per key
    base = 0
    for values in batches:
        idx = np.arange(base, base + len(values), dtype=np.int64)
        processor.begin_batch()
        dec = processor.decode(list(values), idx, res.symbols, partition, ingest_ns)
        res.rejected.extend(dec.rejected)
        if len(dec.columns):
            out, state = process_isolating(processor, dec.columns, state)
            res.outputs.extend(out)
            res.rejected.extend(out.rejected)
            if roundtrip_state:
                changelog.update(processor.changelog_entries(state, np.unique(dec.columns.columns["sym"]), res.symbols))
                state = processor.restore(changelog.items(), res.symbols)
        base += len(values)
    if flush:
        out, state = processor.flush(state, res.symbols, partition)
        res.outputs.extend(out)
    res.state = state
    return res


def fresh_interpreter_json(script: str) -> Any:
    """Run ``script`` in a new Python process (CPU backend; nothing compiled or loaded yet in it) and
    return the JSON its last output line holds; fails with its stderr when it exits non-zero."""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "MYSTOCKS_BACKEND": "cpu"})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])
