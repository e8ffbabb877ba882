"""The ``train`` job spec: one frozen, validated object (:class:`TrainSpec`).

A client submits it as JSON (``mystocks-gpu submit train --spec SPEC.json`` or a ``JobCommand`` on
``cmd.jobs``); :meth:`TrainSpec.from_dict` checks every field and raises
:class:`~mystocks_gpu.processors.exceptions.JobSpecError` naming the field. Fields (defaults in
brackets):

- ``name``: model name, ``[A-Za-z0-9][A-Za-z0-9_.-]{0,99}``: the registry key on ``models`` and
  the live topic ``signals.<name>``. Required.
- ``inputs``: topics to replay, at least one, no repeats: feature topics (``features.ticks``,
  schema ``mystocks.features.FeatureVector``) and bar topics (``md.bars.<n><s|m|h|d>``, schema
  ``mystocks.md.Bar``). A topic outside the catalog is accepted; its schema is read from its
  records. Which schemas can be inputs is the table :data:`INPUT_SCHEMAS` (the factor
  topic of the factor-mining workload joins it with one entry). Required.
- ``features``: feature columns, at least one, no repeats: a column name (a key of the feature
  vectors' ``values`` map, or a Bar field) or ``"topic:column"`` when two inputs carry the same
  name. Bar columns are checked here; feature-map keys once the data is replayed (the error lists
  the keys the topic carries). Required.
- ``start`` / ``end``: ns since the epoch or ISO-8601 (naive = UTC); rows with
  ``start <= ts_event < end`` are used [unbounded]; ``start >= end`` is rejected as an empty range.
- ``universe``: list of symbols or ``"all"`` [``"all"``].
- ``frequency``: panel step ``<n><s|m|h|d>`` (e.g. ``"1s"``, ``"5m"``, ``"1d"``): each input is
  sampled at the last row of every step per symbol, the panel's date is the step's start
  [none: the rows' own times, which must then be bars; required with a feature topic].
- ``label_column``: the price the label is computed from [``close`` of the first bar input, else
  ``last_price`` of the first feature input].
- ``horizon`` >= 1 and ``horizon_unit``: ``bars`` (the symbol's next ``horizon`` price rows) or
  ``seconds`` (the price exactly ``horizon`` s later; a whole number of panel steps) [1 bars];
  ``label_kind``: ``log`` (log return) or ``simple`` [``log``].
- ``family``: one of ``ridge``, ``lasso``, ``elastic_net``, ``random_forest``, ``gbdt``,
  ``mlp``, ``gru`` [``ridge``]; ``params``: the family's hyper-parameters (each checked: name,
  type, range) [defaults]; a family whose library is missing is rejected naming the pip extra.
- ``seed``: int >= 0 for families with a ``seed`` parameter (forest, gbdt, mlp, gru); copied into
  ``params`` (giving both with different values is an error) [the family's default].
- ``walk_forward``: ``{n_splits, test_dates, purge_dates, embargo_dates, scheme, train_dates,
  min_train_dates}`` (see ``gpu_ops.models.walk_forward``; the label horizon, in panel steps, is
  set from ``horizon``; ``purge_dates`` must be >= it) [5 splits of 20 dates, purge = horizon].
- ``nan_policy``: ``drop`` (rows with a NaN/inf feature are dropped and counted in the result's
  ``rows_dropped``) or ``reject`` (any such row fails the job, naming the first) [``drop``]. Rows
  whose label is undefined (the last ``horizon`` rows of a symbol) are always dropped and counted.
- ``backtest``: run the long-short backtest of the out-of-sample predictions [true];
  ``ls_quantile`` in (0, 0.5]: share of symbols held long (top) and short (bottom) per date [0.5];
  ``fees`` / ``slippage``: fractions of notional for that backtest [0.0005 / 0].
- ``publish``: publish the final model (fit on every row) to ``models`` [true].
- ``max_rows``: refuse a panel with more rows than this [20 000 000].
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from mystocks_gpu.exceptions import MyStocksError
from mystocks_gpu.processors.exceptions import InvalidSpec, JobSpecError
from mystocks_gpu.processors.job_kind import MIB, JobSpec
from mystocks_gpu.schemas.batch_codec.numeric_columns import (
    BAR_COLUMNS,
    BAR_SCHEMA,
    FEATURE_SCHEMA,
    NUMERIC_SCHEMAS,
)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
BAR_TOPIC_RE = re.compile(r"^md\.bars\.([1-9][0-9]*)([smhd])$")
FREQ_RE = re.compile(r"^([1-9][0-9]*)([smhd])$")
UNIT_NS = {"s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86_400 * 10**9}
#: schemas a train job can read, and what their rows are; numeric columns of a Bar record usable as
#: features or label prices (one table for every reader of numeric columns:
#: ``schemas/batch_codec/numeric_columns.py``, where a new input schema joins with its decoder)
INPUT_SCHEMAS: dict[str, str] = NUMERIC_SCHEMAS
HORIZON_UNITS = ("bars", "seconds")
LABEL_KINDS = ("log", "simple")
NAN_POLICIES = ("drop", "reject")
#: modules each family needs beyond the core install, with their pip names (checked by presence)
FAMILY_MODULES: dict[str, tuple[tuple[str, str], ...]] = {
    "random_forest": (("sklearn", "scikit-learn"), ("skops", "skops")), "gbdt": (("xgboost", "xgboost"),),
    "mlp": (("torch", "torch"),), "gru": (("torch", "torch"),)}
WF_KEYS = ("n_splits", "test_dates", "purge_dates", "embargo_dates", "scheme", "train_dates", "min_train_dates")


def step_ns(text: str) -> int:
    """ns of a step ``<n><s|m|h|d>``; :class:`JobSpecError` otherwise."""
    m = FREQ_RE.match(text) if isinstance(text, str) else None
    if not m:
        raise JobSpecError(f"frequency: {text!r}; expected <n><s|m|h|d>, e.g. 1s, 5m, 1d")
    return int(m.group(1)) * UNIT_NS[m.group(2)]


def bar_interval_ns(topic: str) -> int | None:
    """The bar interval a ``md.bars.<n><unit>`` topic name states, else None."""
    m = BAR_TOPIC_RE.match(topic)
    return int(m.group(1)) * UNIT_NS[m.group(2)] if m else None


def catalog_schema(topic: str) -> str | None:
    """The value schema of a catalog topic, None for a topic outside the catalog."""
    from mystocks_gpu.topics import get
    from mystocks_gpu.topics.exceptions import UnknownTopic

    try:
        return get(topic).schema
    except UnknownTopic:
        return None


def _times(spec: TrainSpec) -> tuple[int | None, int | None]:
    from mystocks_gpu.processors.backtest.spec import to_ns

    try:
        start, end = to_ns(spec.start, "start"), to_ns(spec.end, "end")
    except InvalidSpec as exc:
        raise JobSpecError(str(exc)) from None
    if start is not None and end is not None and start >= end:
        raise JobSpecError(f"empty or inverted time range: start={start} >= end={end} (ns); "
                           "start is inclusive, end exclusive")
    return start, end


@dataclass(frozen=True)
class TrainSpec(JobSpec):
    """A validated ``train`` job (see the module docstring for every field)."""

    name: str
    inputs: list[str]
    features: list[str]
    start: int | str | None = None
    end: int | str | None = None
    universe: list[str] | str = "all"
    frequency: str | None = None
    label_column: str | None = None
    horizon: int = 1
    horizon_unit: str = "bars"
    label_kind: str = "log"
    family: str = "ridge"
    params: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    walk_forward: dict[str, Any] = field(default_factory=dict)
    nan_policy: str = "drop"
    backtest: bool = True
    ls_quantile: float = 0.5
    fees: float = 0.0005
    slippage: float = 0.0
    publish: bool = True
    max_rows: int = 20_000_000

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if not isinstance(self.name, str) or not NAME_RE.match(self.name):
            raise JobSpecError(f"name: {self.name!r}; a model name is 1-100 characters of A-Z a-z 0-9 . _ - "
                               "starting with a letter or digit")
        self._check_inputs()
        start, end = _times(self)
        set_(self, "start", start)
        set_(self, "end", end)
        u = self.universe
        if isinstance(u, str):
            if u != "all":
                raise JobSpecError(f"universe: {u!r}; give a list of symbols or 'all'")
        else:
            if not u or any(not isinstance(s, str) or not s.strip() for s in u):
                raise JobSpecError("universe: give a non-empty list of symbols or 'all'")
            set_(self, "universe", sorted(set(u)))
        self._check_frequency()
        self._check_columns()
        self._check_label()
        self._check_model()
        set_(self, "walk_forward", self._walk_forward_dict())
        self.wf_config()  # raises on a bad layout
        if self.nan_policy not in NAN_POLICIES:
            raise JobSpecError(f"nan_policy: {self.nan_policy!r} is not one of {', '.join(NAN_POLICIES)}")
        q = self.ls_quantile
        if not (math.isfinite(q) and 0 < q <= 0.5):
            raise JobSpecError(f"ls_quantile: {q} must be in (0, 0.5] (share of symbols long and short)")
        for nm in ("fees", "slippage"):
            v = getattr(self, nm)
            if not math.isfinite(v) or not 0 <= v < 1:
                raise JobSpecError(f"{nm}: {v} must be a fraction in [0, 1)")
        if self.max_rows < 1:
            raise JobSpecError(f"max_rows: {self.max_rows} must be >= 1")

    # ---- field checks ---------------------------------------------------------------------
    def _check_inputs(self) -> None:
        if not self.inputs:
            raise JobSpecError("inputs: give at least one topic to replay (features.ticks, md.bars.1d, ...)")
        if len(set(self.inputs)) != len(self.inputs):
            raise JobSpecError(f"inputs: {self.inputs} names a topic twice")
        for t in self.inputs:
            if not TOPIC_RE.match(t) or t.endswith(".dlq"):
                raise JobSpecError(f"inputs: {t!r} is not a topic that can be replayed")
            schema = catalog_schema(t)
            if schema is not None and schema not in INPUT_SCHEMAS:
                raise JobSpecError(f"inputs: topic {t} carries {schema}; train reads "
                                   f"{', '.join(sorted(INPUT_SCHEMAS))} topics")

    def input_schema(self, topic: str) -> str | None:
        """The schema of an input as far as it is known before replay (catalog or bar topic name)."""
        s = catalog_schema(topic)
        if s is None and BAR_TOPIC_RE.match(topic):
            return BAR_SCHEMA
        return s

    def _check_frequency(self) -> None:
        if self.frequency is not None:
            step_ns(self.frequency)
            return
        tick_level = [t for t in self.inputs if self.input_schema(t) != BAR_SCHEMA]
        if tick_level:
            raise JobSpecError(f"frequency: required with {', '.join(tick_level)} (rows are not bars): give the "
                               "panel step, e.g. \"1s\" or \"1m\"")
        intervals = {bar_interval_ns(t) for t in self.inputs}
        if len(intervals) > 1:
            raise JobSpecError(f"frequency: the bar inputs {self.inputs} have different intervals; give a "
                               "common panel step")

    def step(self) -> int | None:
        """The panel step in ns (``frequency``, else the bar inputs' interval; None if unknown)."""
        if self.frequency is not None:
            return step_ns(self.frequency)
        ivals = {bar_interval_ns(t) for t in self.inputs}
        return ivals.pop() if len(ivals) == 1 else None

    def resolve(self, ref: str) -> tuple[str | None, str]:
        """``(topic or None, column)`` of a column reference ``col`` or ``topic:col``."""
        topic, sep, col = ref.rpartition(":")
        if sep:
            if topic not in self.inputs:
                raise JobSpecError(f"column {ref!r} names topic {topic!r}, which is not in inputs {self.inputs}")
            return topic, col
        return None, ref

    def _check_columns(self) -> None:
        if not self.features:
            raise JobSpecError("features: give at least one feature column")
        if len(set(self.features)) != len(self.features):
            raise JobSpecError(f"features: {self.features} names a column twice")
        for ref in self.features:
            self._check_ref(ref, "features")

    def _check_ref(self, ref: str, what: str) -> None:
        if not isinstance(ref, str) or not ref.strip():
            raise JobSpecError(f"{what}: {ref!r} is not a column name")
        topic, col = self.resolve(ref)
        if not col:
            raise JobSpecError(f"{what}: {ref!r} has no column name")
        schemas = [self.input_schema(topic)] if topic else [self.input_schema(t) for t in self.inputs]
        if all(s == BAR_SCHEMA for s in schemas) and col not in BAR_COLUMNS:
            where = topic or ", ".join(self.inputs)
            raise JobSpecError(f"{what}: unknown feature column {col!r}: {where} carries {', '.join(BAR_COLUMNS)}")

    def _check_label(self) -> None:
        if self.label_column is None:
            bars = [t for t in self.inputs if self.input_schema(t) == BAR_SCHEMA]
            feats = [t for t in self.inputs if self.input_schema(t) == FEATURE_SCHEMA]
            if bars:
                object.__setattr__(self, "label_column", f"{bars[0]}:close")
            elif feats:
                object.__setattr__(self, "label_column", f"{feats[0]}:last_price")
            else:
                raise JobSpecError("label_column: required (no bar or feature input to default to)")
        assert self.label_column is not None
        self._check_ref(self.label_column, "label_column")
        if self.horizon < 1:
            raise JobSpecError(f"horizon: {self.horizon} must be >= 1")
        if self.horizon_unit not in HORIZON_UNITS:
            raise JobSpecError(f"horizon_unit: {self.horizon_unit!r} is not one of {', '.join(HORIZON_UNITS)}")
        if self.label_kind not in LABEL_KINDS:
            raise JobSpecError(f"label_kind: {self.label_kind!r} is not one of {', '.join(LABEL_KINDS)}")
        if self.horizon_unit == "seconds":
            st = self.step()
            if st is None:
                raise JobSpecError("horizon_unit 'seconds' needs a known panel step: set frequency")
            if (self.horizon * 10**9) % st:
                raise JobSpecError(f"horizon: {self.horizon} s is not a whole number of panel steps of "
                                   f"{st / 1e9:g} s")

    def horizon_steps(self) -> int:
        """The label horizon in panel steps (dates): what the walk-forward purge must cover."""
        if self.horizon_unit == "bars":
            return int(self.horizon)
        st = self.step()
        assert st is not None
        return int(self.horizon * 10**9 // st)

    def _check_model(self) -> None:
        from mystocks_gpu.gpu_ops.models import FAMILIES, FAMILY_EXTRA
        from mystocks_gpu.gpu_ops.models.model_base import family_class, require_installed
        from mystocks_gpu.gpu_ops.models.model_params import params_from_mapping

        if self.family not in FAMILIES:
            raise JobSpecError(f"family: unknown model family {self.family!r}; choose one of {', '.join(FAMILIES)}")
        cls = family_class(self.family)
        params = dict(self.params)
        has_seed = "seed" in {f.name for f in cls.params_type.__dataclass_fields__.values()}
        if self.seed is not None:
            if isinstance(self.seed, bool) or self.seed < 0:
                raise JobSpecError(f"seed: {self.seed!r} must be an int >= 0")
            if has_seed:
                if "seed" in params and params["seed"] != self.seed:
                    raise JobSpecError(f"seed: {self.seed} differs from params.seed {params['seed']}; give one")
                params["seed"] = self.seed
        object.__setattr__(self, "params", params)
        try:
            params_from_mapping(self.family, cls.params_type, params)
            for module, pip_name in FAMILY_MODULES.get(self.family, ()):  # found, not imported: validation
                require_installed(module, self.family, pip_name, FAMILY_EXTRA[self.family] or "ml")  # stays fast
        except MyStocksError as exc:
            raise JobSpecError(f"family {self.family}: {exc}") from None

    def _walk_forward_dict(self) -> dict[str, Any]:
        wf = dict(self.walk_forward)
        unknown = sorted(set(wf) - set(WF_KEYS))
        if unknown:
            raise JobSpecError(f"walk_forward: unknown setting(s) {unknown}; known: {', '.join(WF_KEYS)}")
        return wf

    def wf_config(self) -> Any:
        """The :class:`WalkForwardConfig` (label horizon = the horizon in panel steps)."""
        from mystocks_gpu.gpu_ops.models import WalkForwardConfig
        from mystocks_gpu.gpu_ops.models.walk_forward import WalkForwardConfigError

        try:
            return WalkForwardConfig(label_horizon=self.horizon_steps(), **self.walk_forward)
        except (WalkForwardConfigError, TypeError) as exc:
            raise JobSpecError(f"walk_forward: {exc}") from None

    # ---- job-kind hooks ---------------------------------------------------------------------
    def memory_bytes(self) -> int:
        """Device memory estimate: the feature matrix at ``max_rows`` is bounded by the data; a
        fixed 512 MiB covers typical panels (the model families stream their own data)."""
        return 512 * MIB

    def data_range(self) -> dict[str, Any]:
        return {"inputs": list(self.inputs), "start": self.start, "end": self.end, "universe": self.universe}

    def feature_refs(self) -> list[tuple[str | None, str]]:
        """``(topic or None, column)`` of every feature, in spec order."""
        return [self.resolve(f) for f in self.features]
