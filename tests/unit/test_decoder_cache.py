"""Processors build their batch decoders once per symbol table, not once per decode call (building
one - schema lookup, field plans, fingerprint, compiled-loop lookup - cost about 26 µs, as much as
decoding a small batch: the running aggregate and the risk processor paid it for every partition of
every batch). What they decode still equals fastavro's reading of the same records."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import fastavro
import numpy as np
import pytest

from mystocks_gpu.data.synthetic_ticks import SyntheticMarket, generate, symbol_names
from mystocks_gpu.processors.risk.risk_processor import RiskProcessor
from mystocks_gpu.processors.running_aggregate import RunningAggregateProcessor
from mystocks_gpu.processors.tick_features import FeaturesProcessorConfig, TickFeaturesProcessor
from mystocks_gpu.schemas.batch_codec import BatchDecoder, BatchEncoder, DecoderCache, TickDecoder
from mystocks_gpu.schemas.schema_store import default_store
from mystocks_gpu.schemas.symbols import SymbolTable
from tests.unit.portfolio.test_risk_processor import _cfg as risk_cfg  # the risk tests' settings


def _ticks(n: int = 60) -> tuple[list[bytes], list[str]]:
    cols = generate(SyntheticMarket(n_symbols=5, seed=4, events_per_s=100.0), n)
    names = symbol_names(5, 4)
    return BatchEncoder("mystocks.md.Tick").encode(cols, names), names


def _fastavro(values: list[bytes]) -> list[dict[str, Any]]:
    schema = fastavro.parse_schema(default_store().by_name("mystocks.md.Tick").parsed)
    return [fastavro.schemaless_reader(io.BytesIO(v[5:]), schema, None) for v in values]


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the schemas of every BatchDecoder (TickDecoder included) built from here on."""
    seen: list[str] = []
    init = BatchDecoder.__init__

    def counting(self: BatchDecoder, schema: Any, *a: Any, **kw: Any) -> None:
        seen.append(schema if isinstance(schema, str) else "<parsed>")
        init(self, schema, *a, **kw)

    monkeypatch.setattr(BatchDecoder, "__init__", counting)
    return seen


def _risk() -> Any:
    return RiskProcessor(risk_cfg())


@pytest.mark.parametrize("make", [
    RunningAggregateProcessor,
    lambda: TickFeaturesProcessor(FeaturesProcessorConfig(bar_intervals_ns=(), backend="cpu")),
    _risk,
], ids=["running_aggregate", "tick_features", "risk"])
def test_a_processor_builds_one_decoder_per_symbol_table(make: Callable[[], Any], builds: list[str]) -> None:
    proc = make()
    values, _ = _ticks()
    want = _fastavro(values)
    tables = [SymbolTable(), SymbolTable()]
    builds.clear()
    for table in tables:
        for lo in range(0, len(values), 10):  # six batches, each decoded as two partitions
            for part, (a, b) in enumerate(((lo, lo + 4), (lo + 4, lo + 10))):
                d = proc.decode(values[a:b], np.arange(a, b), table, part, 0)
                c = d.columns.columns
                assert [table.symbol(int(s)) for s in c["sym"]] == [w["symbol"] for w in want[a:b]]
                np.testing.assert_array_equal(c["ts"], [w["ts_event"] for w in want[a:b]])
    assert builds == ["mystocks.md.Tick"] * len(tables)  # one per table, none per call


def test_the_cache_keys_on_the_table_itself_not_a_reused_id() -> None:
    made: list[SymbolTable] = []
    cache = DecoderCache(lambda s: (made.append(s), TickDecoder(symbols=s))[1])
    a = SymbolTable()
    assert cache(a) is cache(a) and made == [a]
    b = SymbolTable()
    assert cache(b) is not cache(a) and made == [a, b]
