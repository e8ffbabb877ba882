"""Live inference: the ``signals`` stream processor (``mystocks-gpu run signals --model NAME``).

``features.ticks`` (feature vectors) -> ``signals.<model>`` (Avro ``mystocks.ml.Signal``: symbol,
ts_event, seq, model_version, score), one output per input vector, exactly-once (the runtime's
transaction covers outputs, the state changelog and the input offsets).

Scoring: the vectors of a micro-batch are decoded straight into a float64 matrix of the model's
feature columns (the FeatureVector batch decoder) and scored by one ``Model.predict`` call on the
active backend; rows with a NaN/inf or missing feature are not scored and carry ``score = NaN``
(the documented inference policy: one output per input, nothing dropped). Scores equal the
trained model's ``predict`` on the same rows bit for bit (``predict`` is row-independent).

Model versions and the hot swap (deterministic with respect to input offsets):

* the processor is given a :class:`~.model_source.ModelSource`; at the start of every batch
  (:meth:`~SignalsProcessor.begin_batch`, before any partition is decoded) it polls it
  (non-blocking) and loads each new version with ``load_model`` (hash-checked), on a background
  thread (``SignalsConfig.background_load``, the default: importing a family's library, e.g.
  xgboost, took 1.7 s, which no batch should wait for) or in the batch that sees it. A version that
  is corrupt, fails its hash, or needs a feature the input does not carry is **rejected**: the
  processor keeps the version it has, and the source dead-letters the record and raises an alert;
* each input partition's **state** (changelogged) is the version it scores with. A batch of a
  partition is scored with the newest version loaded when the batch is processed; a newer version
  therefore applies from the first batch after it has loaded, never inside a batch;
* the switch, the batch's outputs (each carrying ``model_version``) and the input offsets commit
  in one transaction, so in the committed output of a partition the versions never decrease in
  offset order and every record names the version that scored it. After a crash the restored
  state names the version in effect at the committed offset; the replayed batches are scored with
  the newest version the restarted worker has (at least that one), so no output is lost or
  duplicated and none is scored with an older version than the committed cut shows.

State per partition: ``{"version": int, "sha256": str}`` (0 = none yet) under one changelog key.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np

from mystocks_gpu.gpu_ops.backend import select
from mystocks_gpu.gpu_ops.models import Model, ModelError, load_model
from mystocks_gpu.processors.training.model_registry import ModelVersion
from mystocks_gpu.processors.training.model_source import ModelSource
from mystocks_gpu.schemas.batch_codec import BatchEncoder, status_message
from mystocks_gpu.schemas.schema_store import SchemaStore
from mystocks_gpu.schemas.symbols import SymbolTable
from mystocks_gpu.streams.processor import (
    Columns,
    Decoded,
    Outputs,
    Processor,
    Rejected,
    decode_errors_to_rejected,
)
from mystocks_gpu.topics.catalog import SIGNALS_PREFIX

log = logging.getLogger(__name__)
FEATURE_SCHEMA = "mystocks.features.FeatureVector"
SIGNAL_SCHEMA = "mystocks.ml.Signal"
#: ``--model-load``: where a new model version is loaded (``SignalsConfig.background_load``)
MODEL_LOADS = ("background", "in-batch")


@dataclass(frozen=True)
class SignalsConfig:
    """``model``: registry name; ``output_topic``: default ``signals.<model>``; ``backend``:
    auto|cpu|gpu for ``predict``; ``input_topic`` [features.ticks]; ``background_load`` [True]."""

    model: str
    output_topic: str | None = None
    backend: str = "auto"
    input_topic: str = "features.ticks"
    #: load a new model version on a background thread (default): no batch waits for the load
    #: (hash check, deserialising, importing the family's library, a first predict), the batches
    #: meanwhile score with the version they have, and the new one applies from the first batch
    #: after it has loaded. False: the batch that first sees a version loads it (a gbdt version
    #: after a ridge one held that batch 1.7-1.8 s on the 2-core VM, importing xgboost)
    background_load: bool = True

    @property
    def topic(self) -> str:
        return self.output_topic or SIGNALS_PREFIX + self.model


@dataclass
class SignalsState:
    """The model version a partition scores with (0 = none yet) and its content hash."""

    version: int = 0
    sha256: str = ""


@dataclass
class LoadedVersion:
    version: int
    sha256: str
    model: Model
    features: tuple[str, ...]


@dataclass
class Loaded:
    """What one load of new versions brought: the version that loaded (None: none did) and the
    newer ones that failed before it, with why."""

    version: LoadedVersion | None
    failed: list[tuple[ModelVersion, str]]


@dataclass
class SignalsStats:
    """Counters since start: rows scored / not scored (NaN), versions loaded / rejected, swaps."""

    scored: int = 0
    unscored: int = 0
    loaded: int = 0
    rejected: int = 0
    swaps: int = 0
    by_version: dict[int, int] = field(default_factory=dict)


@numba.njit(cache=True, nogil=True)
def _finite_rows(X, ok):  # pragma: no cover - numba
    for i in range(X.shape[0]):
        good = True
        for j in range(X.shape[1]):
            v = X[i, j]
            if not (v - v == 0):  # NaN and +-inf give NaN
                good = False
                break
        ok[i] = good


def finite_rows(X: np.ndarray) -> np.ndarray:
    """bool ``(n,)``: rows of ``X`` (n, p) whose values are all finite: one numba pass that stops at
    a row's first bad value (no temporaries; ~3x faster than a BLAS ``X @ 1`` on a loaded machine,
    ~10x faster than ``np.isfinite(X).all(axis=1)``)."""
    if X.ndim != 2 or not X.shape[1] or X.dtype.kind != "f":
        return np.isfinite(X).all(axis=1)  # type: ignore[no-any-return]
    ok = np.empty(X.shape[0], np.bool_)
    _finite_rows(X, ok)
    return ok


class SignalsProcessor(Processor[SignalsState]):
    """Feature vectors -> model scores (see the module docstring)."""

    name = "signals"
    input_topic = "features.ticks"

    def __init__(self, cfg: SignalsConfig, source: ModelSource, store: SchemaStore | None = None) -> None:
        """``store``: the process's schema ids of the feature vectors and signals (default the manifest)."""
        self.cfg = cfg
        self.store = store
        self.source = source
        self.input_topic = cfg.input_topic
        self.output_topics = (cfg.topic,)
        self.backend = select(cfg.backend)
        self.latest: LoadedVersion | None = None
        self.stats = SignalsStats()
        self._enc = BatchEncoder(SIGNAL_SCHEMA, store)
        self._decoders: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._columns: tuple[str, ...] = ()
        self._batch_columns: tuple[str, ...] = ()
        #: the background load in progress (``SignalsConfig.background_load``), or None
        self.pending_load: Future[Loaded] | None = None
        self._loader: ThreadPoolExecutor | None = None
        self._closed = False
        self.refresh(block=True)  # the version to start with: loaded before the worker starts

    # ---- model versions -------------------------------------------------------------------
    def refresh(self, *, block: bool = False) -> None:
        """Install what a finished background load brought, then (no load in progress) poll the
        source: report versions that failed the registry's checks, and load the newest valid new
        version of this model (a newer one that fails to load is reported and the next older new one
        tried; the current model stays when none loads). The load runs on the background thread when
        ``SignalsConfig.background_load`` (this call returns at once; :attr:`pending_load` is its
        future) unless ``block``; ``block`` also waits for a load in progress."""
        if self.pending_load is not None:
            if not (block or self.pending_load.done()):
                return
            self._install(self.pending_load.result())
            self.pending_load = None
        fresh = [mv for mv in self.source.poll() if mv.name == self.cfg.model]
        for mv in fresh:
            if mv.error is not None:
                self._reject(mv, f"ModelIntegrityError: {mv.error}")
        have = self.latest.version if self.latest is not None else 0
        newest_first = sorted((m for m in fresh if m.ok and m.version > have), key=lambda m: -m.version)
        if not newest_first:
            return
        if block or not self.cfg.background_load:
            self._install(self._load_newest(newest_first))
            return
        if self._loader is None:
            self._loader = ThreadPoolExecutor(1, thread_name_prefix=f"model-load-{self.cfg.model}")
        self.pending_load = self._loader.submit(self._load_newest, newest_first)

    def _load_newest(self, newest_first: list[ModelVersion]) -> Loaded:
        """The first of ``newest_first`` that loads, its predict run once on two rows of zeros (so its
        kernels are compiled or loaded here, not in a batch), and the ones before it that failed
        with why. Runs on the loader thread: touches nothing of the processor's."""
        failed: list[tuple[ModelVersion, str]] = []
        for mv in newest_first:
            try:
                loaded = self._load(mv)
                loaded.model.predict(np.zeros((2, len(loaded.features))), assume_finite=True)
            except Exception as exc:  # noqa: BLE001 - any failure to load keeps the previous model
                failed.append((mv, f"{type(exc).__name__}: {exc}"))
                continue
            return Loaded(loaded, failed)
        return Loaded(None, failed)

    def _install(self, result: Loaded) -> None:
        """Report the versions that failed to load; make a loaded one the newest (in the worker's
        thread, between batches)."""
        for mv, msg in result.failed:
            self._reject(mv, msg)
        lv = result.version
        if lv is None or (self.latest is not None and lv.version <= self.latest.version):
            return
        self.latest = lv
        self.stats.loaded += 1
        self._columns = lv.features
        log.info("model version loaded", extra={"fields": {"model": self.cfg.model, "version": lv.version,
                                                           "sha256": lv.sha256[:12]}})

    def _reject(self, mv: ModelVersion, msg: str) -> None:
        self.stats.rejected += 1
        log.error("model version rejected", extra={"fields": {"model": mv.name, "version": mv.version, "error": msg}})
        self.source.reject(mv, msg)

    def _load(self, mv: ModelVersion) -> LoadedVersion:
        meta = mv.metadata
        features = tuple(meta.get("features") or ())
        if not features:
            raise ModelError(f"model {mv.name} v{mv.version}: metadata lists no features")
        schemas = meta.get("feature_schemas") or {}
        sources = meta.get("feature_inputs") or {}
        bad = sorted({f for f in features if (schemas.get(sources.get(f, ""), {}) or {}).get("schema",
                                                                                               FEATURE_SCHEMA) != FEATURE_SCHEMA})
        if bad:
            raise ModelError(f"model {mv.name} v{mv.version} uses feature(s) {bad} that are not feature-vector "
                             f"values; the signals input ({self.input_topic}) cannot supply them")
        model = load_model(mv.blob, backend=self.backend, expected_sha256=mv.content_sha256)
        if model.n_features != len(features):
            raise ModelError(f"model {mv.name} v{mv.version}: {model.n_features} inputs, metadata lists "
                             f"{len(features)} features")
        return LoadedVersion(mv.version, mv.content_sha256, model, features)

    # ---- warm-up ----------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Run the batch path once on throwaway data (see :meth:`Processor.warm_up`): 16 synthetic
        feature vectors carrying the loaded model's features (one with a NaN, so both scoring paths
        run) are encoded, decoded, scored and written to a changelog entry and read back, on a
        throwaway symbol table, without polling the model source: the feature-vector decoder, the
        finite-row check, the model's predict and the signal encoder are compiled or loaded. In a
        fresh process the first batch paid 0.4 s for these and numba's start-up (2-core VM, ridge and
        gbdt alike). The counters in :attr:`stats` and the table's caches are left as they were."""
        names = self._columns
        rng = np.random.default_rng(1)
        X = rng.standard_normal((16, len(names)))
        if names:
            X[3, 0] = np.nan
        symbols, stats = SymbolTable(), self.stats
        codes = symbols.codes(["WARM0", "WARM1"])[np.arange(16) % 2]
        values: list[bytes | None] = [*BatchEncoder(FEATURE_SCHEMA, self.store).encode(
            {"symbol": codes, "ts_event": np.arange(16, dtype=np.int64) * 1_000_000, "seq": np.arange(16, dtype=np.int64),
             "ts_ingest": np.zeros(16, np.int64), "values": X}, symbols, map_keys=names)]
        try:
            self.stats = SignalsStats()
            self.warm_batch(values, symbols)
        finally:
            self.stats = stats

    def forget_symbols(self, symbols: SymbolTable) -> None:
        super().forget_symbols(symbols)
        self._decoders = {k: d for k, d in self._decoders.items() if k[0] != id(symbols)}
        cached = self.__dict__.get("_key_arr")
        if cached is not None and cached[0] is symbols:
            del self._key_arr

    def close(self) -> None:
        """Stop the model loader (a load in progress finishes on its thread and is dropped) and close
        the model source (its consumer and producer). Idempotent."""
        if self._loader is not None:
            self._loader.shutdown(wait=False, cancel_futures=True)
            self._loader = None
        self.pending_load = None
        if not self._closed:
            self._closed = True
            self.source.close()

    # ---- processor contract ---------------------------------------------------------------
    def begin_batch(self) -> None:
        """Poll the model source (a version loaded by now applies from this batch): once a batch,
        before any partition is decoded. A version installed between two partitions' decodes would
        change the feature columns the later ones are decoded with while the earlier ones, decoded
        with the old columns, are still to be scored by the new model."""
        self.refresh()

    def decode(self, values: list[bytes | None], index: np.ndarray, symbols: SymbolTable, partition: int,
               ingest_ns: int) -> Decoded:
        """Decode one partition's feature vectors into the newest version's feature columns."""
        from mystocks_gpu.schemas.batch_codec.feature_vectors import FeatureVectorDecoder

        key = (id(symbols), self._columns)
        dec = self._decoders.get(key)
        if dec is None:
            dec = FeatureVectorDecoder(self._columns, self.store, symbols=symbols)
            self._decoders = {key: dec}
        f = dec.decode(values)
        self._batch_columns = self._columns
        cols = {"sym": f.columns["sym"], "ts": f.columns["ts"], "seq": f.columns["seq"], "X": f.X}
        return Decoded(Columns(cols, symbols, index[f.index], partition, ingest_ns),
                       decode_errors_to_rejected(index, f.status, status_message))

    def initial_state(self) -> SignalsState:
        return SignalsState()

    def current(self, state: SignalsState) -> LoadedVersion | None:
        """The version a batch of a partition in ``state`` is scored with."""
        if self.latest is None:
            return None
        if state.version > self.latest.version:
            log.warning("partition state names model version %d, newer than any this worker loaded (%d); "
                        "scoring with %d", state.version, self.latest.version, self.latest.version)
        return self.latest

    def process(self, batch: Columns, state: SignalsState) -> tuple[Outputs, SignalsState]:
        c = batch.columns
        out = Outputs()
        lv = self.current(state)
        if lv is None:
            out.rejected.extend(Rejected(int(i), "NoModel", f"no valid version of model {self.cfg.model} is loaded")
                                for i in batch.index)
            return out, state
        X = self._matrix(c["X"], lv.features)
        ok = finite_rows(X)
        score = np.full(len(batch), np.nan)
        if ok.all():
            score = lv.model.predict(X, assume_finite=True)
        elif ok.any():
            score[ok] = lv.model.predict(np.ascontiguousarray(X[ok]), assume_finite=True)
        n_ok = int(ok.sum())
        self.stats.scored += n_ok
        self.stats.unscored += len(batch) - n_ok
        self.stats.by_version[lv.version] = self.stats.by_version.get(lv.version, 0) + len(batch)
        values = self._enc.encode({"symbol": c["sym"], "ts_event": c["ts"], "seq": c["seq"],
                                   "model_version": np.full(len(batch), lv.version, np.int64), "score": score},
                                  batch.symbols)
        out.add(self.cfg.topic, self._keys(c["sym"], batch.symbols), values, (c["ts"] // 1_000_000).tolist(),
                sources=batch.index)
        if lv.version != state.version:
            self.stats.swaps += 1
            state = SignalsState(lv.version, lv.sha256)
        return out, state

    def _keys(self, codes: np.ndarray, symbols: SymbolTable) -> list[bytes]:
        """Kafka keys (UTF-8 symbol names) of ``codes``: one gather from a cached array."""
        cached = self.__dict__.get("_key_arr")
        if cached is None or cached[0] is not symbols or cached[1].size != len(symbols):  # the table grows
            arr = np.empty(len(symbols), dtype=object)
            arr[:] = self.key_bytes(np.arange(len(symbols)), symbols)
            cached = (symbols, arr)
            self._key_arr = cached
        return cached[1][codes].tolist()  # type: ignore[no-any-return]

    def _matrix(self, X: np.ndarray, features: tuple[str, ...]) -> np.ndarray:
        """The decoded columns in the model's feature order (float64, C-contiguous)."""
        if features == self._batch_columns:
            return np.ascontiguousarray(X)
        idx = [self._batch_columns.index(f) for f in features]
        return np.ascontiguousarray(X[:, idx])

    def state_to_bytes(self, state: SignalsState, symbols: SymbolTable) -> bytes:
        return json.dumps({"version": state.version, "sha256": state.sha256}, sort_keys=True).encode()

    def state_from_bytes(self, blob: bytes, symbols: SymbolTable) -> SignalsState:
        d = json.loads(blob)
        return SignalsState(int(d["version"]), str(d["sha256"]))


def make_signals(model: str | None = None, output_topic: str | None = None, backend: str = "auto",
                 kafka: Any = None, source: ModelSource | None = None,
                 store: SchemaStore | None = None, background_load: bool = True) -> SignalsProcessor:
    """Factory for ``mystocks-gpu run signals --model NAME [--model-load in-batch]``: a
    :class:`KafkaModelSource` on the ``models`` topic (read to its end first; the model must exist)
    and ``signals.<model>`` created when missing; ``background_load``: see :class:`SignalsConfig`."""
    from mystocks_gpu.exceptions import ConfigError

    if not model:
        raise ConfigError("the signals processor needs --model NAME (a model on the models topic)")
    cfg = SignalsConfig(model, output_topic, backend, background_load=background_load)
    if source is None:
        from mystocks_gpu.infra.config import load_settings
        from mystocks_gpu.processors.training.model_registry import (
            ModelNotFound,
            ensure_signals_topic,
        )
        from mystocks_gpu.processors.training.model_source import KafkaModelSource

        kafka = kafka if kafka is not None else load_settings().kafka
        source = KafkaModelSource(kafka, store=store)
        proc = SignalsProcessor(cfg, source, store)
        if proc.latest is None:
            proc.close()
            raise ModelNotFound(f"no valid version of model {model!r} on the models topic; train one first: "
                                "mystocks-gpu submit train --spec SPEC.json --wait")
        if output_topic is None:
            ensure_signals_topic(kafka, model)
        return proc
    return SignalsProcessor(cfg, source, store)
