"""The signals processor without a broker (tests/harness.py): one output per input vector whose
score equals the model's predict on that row bit for bit, whatever the batch cuts; a new version
applies from the next batch (recorded in every output and in the state); bad versions are
rejected and the previous model kept; NaN features give a NaN score; no model -> dead letters."""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest

from mystocks_gpu.gpu_ops.models import make_model
from mystocks_gpu.processors.training.model_registry import ModelVersion
from mystocks_gpu.processors.training.model_source import InMemoryModelSource
from mystocks_gpu.processors.training.signals_processor import SignalsConfig, SignalsProcessor
from mystocks_gpu.schemas import AvroCodec
from mystocks_gpu.schemas.symbols import SymbolTable
from tests.harness import cut, fresh_interpreter_json, run_batches

CODEC = AvroCodec()
FEATS = ["f1", "f2", "f3"]


def _vectors(n: int, seed: int = 1, nan_every: int = 0) -> tuple[list[bytes], np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3))
    syms = [f"S{i % 9}" for i in range(n)]
    out = []
    for i in range(n):
        vals = {"zzz": 1.0, "f3": X[i, 2], "f1": X[i, 0], "f2": X[i, 1]}  # map order != model order
        if nan_every and i % nan_every == 0:
            vals["f2"] = float("nan")
            X[i, 1] = np.nan
        out.append(CODEC.encode("mystocks.features.FeatureVector",
                                {"symbol": syms[i], "ts_event": 10**18 + i * 10**6, "seq": i, "ts_ingest": 0,
                                 "values": vals}))
    return out, X, syms


def _version(name: str, v: int, family: str = "ridge", seed: int = 0, **meta: object) -> tuple[ModelVersion, object]:
    rng = np.random.default_rng(100 + seed)
    X = rng.standard_normal((400, 3))
    y = X @ rng.standard_normal(3) + rng.standard_normal(400) * 0.1
    params = {"n_estimators": 20, "max_depth": 3} if family == "gbdt" else {"alpha": 0.5 + seed}
    model = make_model(family, params, backend="cpu").fit(X, y)
    blob = model.to_bytes()
    md = {"features": FEATS, "feature_inputs": dict.fromkeys(FEATS, "features.ticks"),
          "feature_schemas": {"features.ticks": {"schema": "mystocks.features.FeatureVector"}}, **meta}
    return ModelVersion(name, v, hashlib.sha256(blob).hexdigest(), md, blob, 0, v * 10), model


def _decoded(res: object, topic: str) -> list[dict]:
    return [CODEC.decode(v) for v in res.outputs.records[topic][1]]  # type: ignore[attr-defined]


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warmed-up"])
@pytest.mark.parametrize("family", ["ridge", "gbdt"])
def test_scores_equal_predict_bit_for_bit_whatever_the_batches(family: str, warm: bool) -> None:
    mv, model = _version("m", 1, family)
    proc = SignalsProcessor(SignalsConfig("m", backend="cpu"), InMemoryModelSource([mv]))
    if warm:  # the warm-up's throwaway vectors leave no trace in the outputs, the symbols or the counters
        proc.warm_up()
    values, X, syms = _vectors(1000, nan_every=37)
    res = run_batches(proc, cut(values, [1, 7, 250, 3, 500]), roundtrip_state=True)
    out = _decoded(res, "signals.m")
    assert [o["seq"] for o in out] == list(range(1000))  # one output per input, in order
    assert [o["symbol"] for o in out] == syms and {o["model_version"] for o in out} == {1}
    keys, _, ts = res.outputs.records["signals.m"]
    assert keys == [s.encode() for s in syms] and ts == [(10**18 + i * 10**6) // 10**6 for i in range(1000)]
    assert res.outputs.sources["signals.m"].tolist() == list(range(1000))
    score = np.array([o["score"] for o in out])
    ok = np.isfinite(X).all(axis=1)
    assert np.isnan(score[~ok]).all() and (~ok).sum() == 28
    np.testing.assert_array_equal(score[ok], model.predict(X[ok]))  # type: ignore[attr-defined]
    assert proc.stats.scored == 972 and proc.stats.unscored == 28 and res.state.version == 1


def test_a_new_version_applies_from_the_next_batch_and_bad_ones_are_rejected() -> None:
    v1, m1 = _version("m", 1)
    v2, m2 = _version("m", 2, seed=1)
    corrupt, _ = _version("m", 3, seed=2)
    corrupt.blob = corrupt.blob[:-3] + b"xyz"  # bytes altered: the recorded hash no longer matches
    bars_only, _ = _version("m", 4, seed=3, feature_schemas={"features.ticks": {"schema": "mystocks.md.Bar"}})
    other, _ = _version("other", 9)
    src = InMemoryModelSource([other, v1])
    proc = SignalsProcessor(SignalsConfig("m", backend="cpu", background_load=False), src)  # loads in the batch
    values, X, _ = _vectors(600, seed=2)
    state = proc.initial_state()
    symbols = SymbolTable()
    versions = []
    for b, chunk in enumerate(cut(values, [100] * 6)):
        if b == 2:
            src.push(v2)
        if b == 4:
            src.push(corrupt)
            src.push(bars_only)
            src.push(v1)  # an older version arriving late is ignored
        idx = np.arange(b * 100, b * 100 + len(chunk))
        proc.begin_batch()  # as the worker does: polls the source, loads the new version (in the batch)
        dec = proc.decode(chunk, idx, symbols, 0, 0)
        out, state = proc.process(dec.columns, state)
        recs = [CODEC.decode(v) for v in out.records["signals.m"][1]]
        versions.append({r["model_version"] for r in recs})
        want = (m1 if b < 2 else m2).predict(X[idx])  # type: ignore[attr-defined]
        np.testing.assert_array_equal([r["score"] for r in recs], want)
        assert state.version == (1 if b < 2 else 2)
    assert versions == [{1}, {1}, {2}, {2}, {2}, {2}]
    rejected = {mv.version: err for mv, err in src.rejected}
    assert set(rejected) == {3, 4}
    assert "hash mismatch" in rejected[3] and "cannot supply" in rejected[4]
    assert proc.stats.swaps == 2 and proc.stats.rejected == 2 and proc.latest.version == 2  # type: ignore[union-attr]


class _GatedLoads(SignalsProcessor):
    """Loads of versions after the first wait for ``gate``: a load that takes as long as a test wants."""

    gate = threading.Event()

    def _load(self, mv):  # type: ignore[no-untyped-def]
        if mv.version > 1:
            assert self.gate.wait(60), "the test never opened the gate"
        return super()._load(mv)


def test_a_background_load_never_holds_a_batch_and_applies_from_the_batch_after_it() -> None:
    """Default ``background_load``: while a new version loads (held here until the gate opens), the
    batches are scored at once with the version they have, bit for bit; once the load is done, the
    next batch switches. Versions that fail to load in the background are rejected when collected,
    the loaded version kept."""
    v1, m1 = _version("m", 1)
    v2, m2 = _version("m", 2, family="gbdt", seed=1)
    corrupt, _ = _version("m", 3, seed=2)
    corrupt.blob = corrupt.blob[:-3] + b"xyz"
    src = InMemoryModelSource([v1])
    _GatedLoads.gate = threading.Event()
    proc = _GatedLoads(SignalsConfig("m", backend="cpu"), src)
    assert proc.cfg.background_load and proc.latest is not None and proc.latest.version == 1  # loaded at start
    values, X, _ = _vectors(500, seed=4)
    state, symbols = proc.initial_state(), SymbolTable()

    def batch(b: int) -> set[int]:
        nonlocal state
        idx = np.arange(b * 100, b * 100 + 100)
        proc.begin_batch()
        out, state = proc.process(proc.decode(values[b * 100:(b + 1) * 100], idx, symbols, 0, 0).columns, state)
        recs = [CODEC.decode(v) for v in out.records["signals.m"][1]]
        want = {1: m1, 2: m2}[recs[0]["model_version"]].predict(X[idx])  # type: ignore[attr-defined]
        np.testing.assert_array_equal([r["score"] for r in recs], want)
        return {r["model_version"] for r in recs}

    src.push(v2)
    assert batch(0) == {1} and proc.pending_load is not None  # the load started; this batch did not wait
    assert batch(1) == {1} and not proc.pending_load.done()  # still loading (the gate is shut)
    _GatedLoads.gate.set()
    proc.pending_load.result(timeout=60)
    assert batch(2) == {2} and proc.pending_load is None and state.version == 2
    src.push(corrupt)
    assert batch(3) == {2} and proc.pending_load is not None
    proc.pending_load.result(timeout=60)
    assert batch(4) == {2} and [mv.version for mv, _ in src.rejected] == [3] and "hash mismatch" in src.rejected[0][1]
    assert proc.stats.loaded == 2 and proc.stats.rejected == 1 and proc.stats.swaps == 2


class _LoadsBetweenPartitions(_GatedLoads):
    """The held load is let go, and finishes, right after a batch's first partition is decoded."""

    def decode(self, values, index, symbols, partition, ingest_ns):  # type: ignore[no-untyped-def]
        out = super().decode(values, index, symbols, partition, ingest_ns)
        if partition == 0 and self.pending_load is not None:
            self.gate.set()
            self.pending_load.result(timeout=60)
        return out


def test_a_version_loaded_mid_batch_applies_from_the_next_batch_with_its_own_columns() -> None:
    """A batch's partitions are decoded with one version's feature columns and scored by that
    version: one that finishes loading between two partitions' decodes (here with its features in
    another order) waits for the next batch. (Polling per partition scored the first partition's
    rows, decoded in the old order, with the new model.)"""
    v1, m1 = _version("m", 1)
    v2, m2 = _version("m", 2, seed=1, features=["f3", "f1", "f2"])
    src = InMemoryModelSource([v1])
    _GatedLoads.gate = threading.Event()
    proc = _LoadsBetweenPartitions(SignalsConfig("m", backend="cpu"), src)
    values, X, _ = _vectors(200, seed=6)
    symbols, states = SymbolTable(), {0: proc.initial_state(), 1: proc.initial_state()}
    want = {1: m1.predict(X), 2: m2.predict(np.ascontiguousarray(X[:, [2, 0, 1]]))}  # type: ignore[attr-defined]

    def batch(lo: int) -> set[int]:
        proc.begin_batch()  # what the worker calls before it decodes the batch's partitions
        dec = proc.decode_partitions(values, {0: list(range(lo, lo + 50)), 1: list(range(lo + 50, lo + 100))},
                                     symbols, 0)
        out, new = proc.process_partitions({p: d.columns for p, d in dec.items()}, states)
        states.update(new)
        recs = [CODEC.decode(v) for v in out.records["signals.m"][1]]
        rows = out.sources["signals.m"]
        assert rows.tolist() == list(range(lo, lo + 100))
        for r, i in zip(recs, rows.tolist(), strict=True):
            assert r["score"] == want[r["model_version"]][i], (i, r)
        return {r["model_version"] for r in recs}

    src.push(v2)
    assert batch(0) == {1} and proc.pending_load is not None and proc.pending_load.done()
    assert batch(100) == {2} and {s.version for s in states.values()} == {2}


class _ClosingSource(InMemoryModelSource):
    closes = 0

    def close(self) -> None:
        self.closes += 1


def test_close_stops_the_loader_and_closes_the_source_once() -> None:
    """``close`` (the worker calls it when it stops) with a background load in progress: the
    processor forgets the load, its loader thread ends once the load returns (nothing is installed),
    the source is closed, and a second ``close`` does nothing more."""
    v1, _ = _version("m", 1)
    v2, _ = _version("m", 2, seed=1)
    src = _ClosingSource([v1])
    _GatedLoads.gate = threading.Event()
    proc = _GatedLoads(SignalsConfig("m", backend="cpu"), src)
    src.push(v2)
    proc.begin_batch()
    loading, threads = proc.pending_load, list(proc._loader._threads)  # type: ignore[union-attr]  # noqa: SLF001
    assert loading is not None and not loading.done() and len(threads) == 1
    proc.close()
    assert proc.pending_load is None and proc._loader is None and src.closes == 1  # noqa: SLF001
    _GatedLoads.gate.set()
    threads[0].join(60)
    assert not threads[0].is_alive() and loading.done()
    assert proc.latest is not None and proc.latest.version == 1  # the finished load was not installed
    proc.close()
    assert src.closes == 1


def test_replay_polls_the_model_source_once_per_batch_before_decoding() -> None:
    """:func:`streams.replay.replay` calls ``begin_batch`` before each batch's decode, as the worker
    does: a version pushed between two batches (loaded in the batch) scores the second one."""
    from mystocks_gpu.streams.batching import RawBatch
    from mystocks_gpu.streams.replay import replay

    v1, m1 = _version("m", 1)
    v2, m2 = _version("m", 2, seed=1)
    src = InMemoryModelSource([v1])
    proc = SignalsProcessor(SignalsConfig("m", backend="cpu", background_load=False), src)
    values, X, _ = _vectors(40, seed=3)

    class _Batches:
        def batches(self):  # type: ignore[no-untyped-def]
            for b in range(2):
                if b == 1:
                    src.push(v2)
                rows = range(b * 20, b * 20 + 20)
                yield RawBatch("features.ticks", [values[i] for i in rows], [None] * 20, [0] * 20, list(rows),
                               [1_000 + i for i in rows])

    res = replay(proc, _Batches(), flush=False)  # type: ignore[arg-type]
    recs = [CODEC.decode(v) for v in res.outputs.records["signals.m"][1]]
    assert [r["model_version"] for r in recs] == [1] * 20 + [2] * 20
    np.testing.assert_array_equal([r["score"] for r in recs],
                                  np.concatenate([m1.predict(X[:20]), m2.predict(X[20:])]))  # type: ignore[attr-defined]


def test_a_registry_error_is_rejected_and_no_model_means_dead_letters() -> None:
    broken = ModelVersion("m", 1, "", {}, b"", 0, 3, error="model m v1: part(s) [0] of 2 missing")
    src = InMemoryModelSource([broken])
    proc = SignalsProcessor(SignalsConfig("m", backend="cpu"), src)
    assert proc.latest is None and "missing" in src.rejected[0][1]
    values, _, _ = _vectors(5)
    res = run_batches(proc, [values])
    assert "signals.m" not in res.outputs.records
    assert [r.index for r in res.rejected] == list(range(5)) and res.rejected[0].error_class == "NoModel"


def test_state_names_the_version_and_survives_the_changelog() -> None:
    v1, _ = _version("m", 1)
    proc = SignalsProcessor(SignalsConfig("m", output_topic="custom", backend="cpu"), InMemoryModelSource([v1]))
    values, _, _ = _vectors(10)
    res = run_batches(proc, [values[:5], values[5:]], roundtrip_state=True)
    assert proc.output_topics == ("custom",) and len(res.outputs.records["custom"][1]) == 10
    blob = proc.state_to_bytes(res.state, res.symbols)
    assert proc.state_from_bytes(blob, res.symbols) == res.state and res.state.sha256 == v1.content_sha256


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_finite_rows_equals_numpy_isfinite(dtype: type) -> None:
    """The row-sum shortcut agrees with ``np.isfinite(X).all(axis=1)``: NaN, +-inf, inf - inf in one
    row, and finite rows whose sum overflows."""
    from mystocks_gpu.processors.training.signals_processor import finite_rows

    rng = np.random.default_rng(7)
    X = (rng.uniform(-1, 1, (2000, 7)) * (float(np.finfo(dtype).max) / 2)).astype(dtype)  # many sums overflow
    X[rng.integers(0, 2000, 60), rng.integers(0, 7, 60)] = np.nan
    X[3, 2], X[4, 1], X[5, :2] = np.inf, -np.inf, (np.inf, -np.inf)
    np.testing.assert_array_equal(finite_rows(X), np.isfinite(X).all(axis=1))


_WARM_UP_SCRIPT = """
import json
from mystocks_gpu.gpu_ops.models import linear_models
from mystocks_gpu.processors.training import signals_processor as sp
from mystocks_gpu.processors.training.model_source import InMemoryModelSource
from tests.unit.training.test_signals_processor import _version
mv, _ = _version("m", 1, "ridge")
proc = sp.SignalsProcessor(sp.SignalsConfig("m", backend="cpu"), InMemoryModelSource([mv]))
kernels = {"finite_rows": sp._finite_rows, "ridge_predict": linear_models.predict_rows}
before = {k: len(d.signatures) for k, d in kernels.items()}
proc.warm_up()
print(json.dumps({"before": before, "after": {k: len(d.signatures) for k, d in kernels.items()},
                  "scored": proc.stats.scored + proc.stats.unscored, "decoders": len(proc._decoders),
                  "keys": "_key_arr" in vars(proc)}))
"""


def test_warm_up_compiles_the_scoring_path_and_leaves_no_trace() -> None:
    """In a fresh interpreter, with a ridge model loaded: the ridge predict is compiled by the load
    itself (a loaded version runs predict once), the finite-row check has no compiled signature
    before ``warm_up`` and one after it; the counters are still zero and no decoder or key cache
    of the throwaway symbol table is kept."""
    got = fresh_interpreter_json(_WARM_UP_SCRIPT)
    assert got["before"] == {"finite_rows": 0, "ridge_predict": 1}, got
    assert got["after"] == {"finite_rows": 1, "ridge_predict": 1}, got
    assert got["scored"] == 0 and got["decoders"] == 0 and not got["keys"], got
