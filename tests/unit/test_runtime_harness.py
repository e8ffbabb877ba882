"""Runtime without a broker: batch closing, the built-in processor against pandas, state
(de)serialisation, and isolation of records that make a processor raise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mystocks_gpu.data.synthetic_ticks import SyntheticMarket, generate, symbol_names, to_records
from mystocks_gpu.processors.running_aggregate import RunningAggregateProcessor
from mystocks_gpu.schemas import AvroCodec
from mystocks_gpu.schemas.symbols import SymbolTable
from mystocks_gpu.streams.batching import BatchAccumulator
from mystocks_gpu.streams.processor import Columns, Outputs
from tests.harness import cut, fresh_interpreter_json, run_batches
from tests.running_reference import running_aggregate

CODEC = AvroCodec()


# ---- batch closing ------------------------------------------------------------------------------
def test_batch_closes_on_max_records() -> None:
    acc = BatchAccumulator(max_records=3, max_bytes=10**9, linger_s=10)
    assert not acc.add(b"a", None, 0, 0, 0, now=0.0)
    assert not acc.add(b"b", None, 0, 1, 0, now=0.1)
    assert acc.add(b"c", None, 1, 0, 0, now=0.2)
    assert acc.ready(0.2)
    b = acc.take()
    assert b.values == [b"a", b"b", b"c"] and b.next_offsets() == {0: 2, 1: 1} and b.first_offsets() == {0: 0, 1: 0}
    assert len(acc.batch) == 0 and not acc.ready(100.0)


def test_batch_closes_on_max_bytes() -> None:
    acc = BatchAccumulator(max_records=100, max_bytes=10, linger_s=10)
    assert not acc.add(b"12345", None, 0, 0, 0, now=0.0)
    assert acc.add(b"123456", None, 0, 1, 0, now=0.0)  # 11 bytes >= 10
    assert acc.take().nbytes == 11


def test_batch_linger_counts_from_first_record() -> None:
    acc = BatchAccumulator(max_records=100, max_bytes=10**9, linger_s=0.05)
    assert acc.remaining_s(5.0) == float("inf")
    acc.add(b"x", None, 0, 0, 0, now=1.0)
    acc.add(b"y", None, 0, 1, 0, now=1.04)  # a later record does not extend the deadline
    assert not acc.ready(1.049)
    assert acc.remaining_s(1.02) == pytest.approx(0.03)
    assert acc.ready(1.05)


class _Msg:
    def __init__(self, v: bytes, p: int, o: int) -> None:
        self.v, self.p, self.o = v, p, o

    def value(self) -> bytes:
        return self.v

    def key(self) -> None:
        return None

    def partition(self) -> int:
        return self.p

    def offset(self) -> int:
        return self.o

    def timestamp(self) -> tuple[int, int]:
        return (1, 1000 + self.o)

    def topic(self) -> str:
        return "t"


def test_add_messages_cuts_on_records_and_bytes_across_consume_calls() -> None:
    acc = BatchAccumulator(max_records=5, max_bytes=10**9, linger_s=10)
    rest = acc.add_messages([_Msg(b"x", 0, i) for i in range(3)], now=0.0)
    assert rest == [] and not acc.ready(0.0)  # one consume() call did not fill it
    rest = acc.add_messages([_Msg(b"y", 1, i) for i in range(4)], now=0.1)
    assert len(rest) == 2 and acc.ready(0.1)
    b = acc.take()
    assert b.partitions == [0, 0, 0, 1, 1] and b.next_offsets() == {0: 3, 1: 2} and b.timestamps_ms[-1] == 1001
    acc = BatchAccumulator(max_records=100, max_bytes=10, linger_s=10)
    rest = acc.add_messages([_Msg(b"abcd", 0, i) for i in range(5)], now=0.0)
    assert len(acc.batch) == 3 and acc.batch.nbytes == 12 and len(rest) == 2 and acc.ready(0.0)
    acc = BatchAccumulator(max_records=100, max_bytes=10, linger_s=10)  # a byte cut in a second call
    acc.add_messages([_Msg(b"abcd", 0, 0)], now=0.0)
    rest = acc.add_messages([_Msg(b"abcd", 0, i) for i in range(1, 6)], now=0.0)
    assert len(acc.batch) == 3 and len(rest) == 3
    assert acc.batch.nbytes == sum(map(len, acc.batch.values)) == 12  # the bytes it holds, each counted once


def test_drop_revoked_partitions() -> None:
    acc = BatchAccumulator(100, 10**9, 1)
    for i, p in enumerate([0, 1, 0, 2]):
        acc.add(bytes([i]), None, p, i, 0, now=0)
    assert acc.batch.drop_partitions({0}) == 2
    assert acc.batch.partitions == [1, 2] and acc.batch.values == [b"\x01", b"\x03"]


def test_derived_columns_follow_the_records_a_batch_holds() -> None:
    """by_partition() and timestamps_array() are computed once per batch content: records added
    after, or dropped (even when as many come back), must show in the next answer."""
    def expect(batch) -> tuple[dict[int, list[int]], list[int]]:  # type: ignore[no-untyped-def]
        frame = pd.DataFrame({"p": batch.partitions})
        return {int(p): list(ix) for p, ix in frame.groupby("p").indices.items()}, list(batch.timestamps_ms)

    acc = BatchAccumulator(100, 10**9, 1)
    for i, p in enumerate([3, 1, 3, 2]):
        acc.add(bytes([i]), None, p, i, 1000 + i, now=0)
    b = acc.batch
    for _ in range(2):
        want_groups, want_ts = expect(b)
        assert b.by_partition() == want_groups and b.timestamps_array().tolist() == want_ts
    assert not b.timestamps_array().flags.writeable
    acc.add(b"x", None, 1, 9, 2000, now=0)
    assert b.by_partition() == expect(b)[0] and b.timestamps_array().tolist() == expect(b)[1]
    assert b.drop_partitions({3}) == 2
    acc.add(b"y", None, 2, 10, 3000, now=0)
    acc.add(b"z", None, 2, 11, 3001, now=0)  # five records again, as before the drop
    assert b.by_partition() == expect(b)[0] == {1: [0, 2], 2: [1, 3, 4]}
    assert b.timestamps_array().tolist() == expect(b)[1] == [1001, 1003, 2000, 3000, 3001]


# ---- the built-in processor vs pandas ----------------------------------------------------------
def _ticks(n: int = 3000, symbols: int = 25, seed: int = 5) -> list[dict]:
    return list(to_records(generate(SyntheticMarket(n_symbols=symbols, seed=seed), n), symbol_names(symbols, seed)))


def _reference(recs: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(recs)
    return running_aggregate(df["symbol"].to_numpy(), df["seq"].to_numpy(), df["price"].to_numpy())


def _outputs_frame(out: Outputs) -> pd.DataFrame:
    keys, values, _ = out.records["agg.running"]
    rows = [CODEC.decode(v) for v in values]
    assert [k.decode() for k in keys] == [r["symbol"] for r in rows]
    return pd.DataFrame(rows)[["symbol", "seq", "count", "sum", "last"]]


@pytest.mark.parametrize("sizes", [[10**9], [1] * 50 + [7, 13, 999], [300] * 20, [2999, 1]])
@pytest.mark.parametrize("roundtrip", [False, True])
def test_running_aggregate_matches_pandas_for_any_batch_cut(sizes: list[int], roundtrip: bool) -> None:
    recs = _ticks()
    values = [CODEC.encode("Tick", r) for r in recs]
    res = run_batches(RunningAggregateProcessor(), cut(values, sizes), roundtrip_state=roundtrip)
    got = _outputs_frame(res.outputs)
    ref = _reference(recs)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), ref.reset_index(drop=True), check_exact=True,
                                  check_dtype=False)
    assert not res.rejected


def test_state_bytes_round_trip_into_a_fresh_symbol_table() -> None:
    proc = RunningAggregateProcessor()
    recs = _ticks(500)
    res = run_batches(proc, [[CODEC.encode("Tick", r) for r in recs]])
    blob = proc.state_to_bytes(res.state, res.symbols)
    other = SymbolTable(["ZZZ", "YYY"])  # different codes on the restoring side
    st = proc.state_from_bytes(blob, other)
    for sym in set(r["symbol"] for r in recs):
        a, b = res.symbols.code(sym), other.code(sym)
        assert st.count[b] == res.state.count[a] and st.total[b] == res.state.total[a] and st.last[b] == res.state.last[a]
    assert st.count[other.code("ZZZ")] == 0


_WARM_UP_SCRIPT = """
import json
from mystocks_gpu.processors import running_aggregate as ra
proc = ra.RunningAggregateProcessor()
before = len(ra._accumulate.signatures)
proc.warm_up()
print(json.dumps({"before": before, "after": len(ra._accumulate.signatures), "decoders": len(proc._decoder._by_table),
                  "keys": len(vars(proc).get("_key_cache", {}))}))
"""


def test_aggregate_warm_up_compiles_the_kernel_and_keeps_no_table() -> None:
    """In a fresh interpreter: the accumulate kernel has no compiled signature before ``warm_up`` and
    one after it; no decoder or key cache of the throwaway symbol table is kept."""
    got = fresh_interpreter_json(_WARM_UP_SCRIPT)
    assert got == {"before": 0, "after": 1, "decoders": 0, "keys": 0}, got


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warmed-up"])
def test_poison_records_go_to_dlq_and_the_rest_is_processed(warm: bool) -> None:
    recs = _ticks(200)
    values: list[bytes | None] = [CODEC.encode("Tick", r) for r in recs]
    bad_rows = {3: b"garbage", 50: b"\x00\x00\x00\x27\x0fxx"}  # garbage; unknown schema id 9999
    nan = dict(recs[80], price=float("nan"))
    future = dict(recs[120], ts_event=4_000_000_000 * 10**9)
    values[3], values[50] = bad_rows[3], bad_rows[50]
    values[80], values[120] = CODEC.encode("Tick", nan), CODEC.encode("Tick", future)
    proc = RunningAggregateProcessor()
    if warm:  # the warm-up's throwaway ticks leave no trace in the outputs, the rejects or the symbols
        proc.warm_up()
    res = run_batches(proc, cut(values, [64] * 10))
    rej = {r.index: r for r in res.rejected}
    assert set(rej) == {3, 50, 80, 120}
    assert rej[3].error_class == "DecodeError" and rej[50].error_class == "UnknownSchemaId"
    assert rej[80].error_class == "ValidationError" and "price" in rej[80].message
    assert rej[120].error_class == "ValidationError" and "future" in rej[120].message
    good = [r for i, r in enumerate(recs) if i not in rej]
    assert res.outputs.count() + len(rej) == len(recs)
    pd.testing.assert_frame_equal(_outputs_frame(res.outputs), _reference(good).reset_index(drop=True),
                                  check_exact=True, check_dtype=False)


class _Fragile(RunningAggregateProcessor):
    """Raises on any batch containing seq 7 of its first symbol (a processor-level poison record)."""

    def process(self, batch: Columns, state):  # type: ignore[no-untyped-def]
        if np.any(batch.columns["seq"] == 7):
            raise ValueError("cannot handle seq 7")
        return super().process(batch, state)


def test_processor_exception_is_isolated_by_bisection() -> None:
    recs = _ticks(400, symbols=3)
    values = [CODEC.encode("Tick", r) for r in recs]
    res = run_batches(_Fragile(), cut(values, [100] * 4))
    poisoned = [i for i, r in enumerate(recs) if r["seq"] == 7]
    assert sorted(r.index for r in res.rejected) == poisoned
    assert all(r.error_class == "ValueError" and r.message == "cannot handle seq 7" for r in res.rejected)
    good = [r for r in recs if r["seq"] != 7]
    pd.testing.assert_frame_equal(_outputs_frame(res.outputs), _reference(good).reset_index(drop=True),
                                  check_exact=True, check_dtype=False)


class _KeyedMsg(_Msg):
    def __init__(self, v: bytes | None, k: bytes | None, o: int) -> None:
        super().__init__(v, 0, o)  # type: ignore[arg-type]
        self.k = k

    def key(self) -> bytes | None:  # type: ignore[override]
        return self.k


def test_batch_size_bound_covers_every_record_and_is_unknown_after_single_adds() -> None:
    """The bound lets the worker's size check skip its per-record pass: it must be >= every
    record's key + value bytes (checked against a plain per-record sum)."""
    rng = np.random.default_rng(12345)
    acc = BatchAccumulator(max_records=1000, max_bytes=10**9, linger_s=10)
    for call in range(3):
        msgs = [_KeyedMsg(None if rng.random() < 0.1 else bytes(int(rng.integers(0, 500))),
                          None if rng.random() < 0.2 else bytes(int(rng.integers(1, 40))), call * 100 + i)
                for i in range(100)]
        acc.add_messages(msgs, now=0.0)
    b = acc.batch
    sizes = [len(v or b"") + len(k or b"") for v, k in zip(b.values, b.keys, strict=True)]
    assert b.max_record_bytes >= max(sizes)
    assert b.max_record_bytes <= max(len(v or b"") for v in b.values) + max(len(k or b"") for k in b.keys)
    acc.add(b"x" * 10, None, 0, 999, 0, now=0.0)
    acc.add_messages([_KeyedMsg(b"y", b"k", 1000)], now=0.0)
    assert acc.batch.max_record_bytes == -1  # a single add leaves no bound: the check goes per record
    assert acc.take().max_record_bytes == -1 and acc.batch.max_record_bytes == -1
    acc.add_messages([_KeyedMsg(b"abc", b"kk", 0)], now=0.0)
    assert acc.batch.max_record_bytes == 5
