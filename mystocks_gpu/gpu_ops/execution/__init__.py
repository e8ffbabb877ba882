"""Order-execution optimisation (workload 6): parent orders -> child schedules + pre-trade cost
scores, in microseconds per order in-process and in batches on the GPU, and a tape simulator.

Models: Almgren-Chriss (2000) optimal liquidation / acquisition (closed form: permanent impact
gamma, temporary impact eta, half spread eps, risk aversion lambda, volatility sigma, N slices),
and the TWAP, VWAP (intraday volume profile) and POV (participation of expected volume) baselines,
all scored under the same Almgren-Chriss cost model (E[IS], V[IS], impact, spread, timing risk),
plus the square-root impact estimate ``Y sigma sqrt(Q / ADV) price`` per share. Schedules are in
integer lots summing exactly to the parent quantity (largest remainder), with a per-slice
participation cap (a cap that cannot fill the order caps the schedule and reports
``unfilled_qty``). Units: see ``execution_config``; the fill rule: see ``exec_simulator``.

Entry points
------------
In-process, one order (the latency headline; ~5-8 us p50 with the numba core; call
``warm_up()`` once at start-up so the first order pays no JIT compilation)::

    model = prepare(MarketParams("AAPL", price=180.0, sigma=0.02, adv=5e7, spread=0.02))
    sched = schedule(ParentOrder("o1", "AAPL", "sell", 250_000, end_ns=t_end), model)
    sched.quantities, sched.times_ns, sched.score.expected_shortfall

Stream processor (phase 2): a pure batched function over columns and per-symbol state::

    table, codes = ParamsTable.from_params(params)          # processor state (``table.set``)
    out = schedule_batch(OrderColumns(...), table, config, now_ns=batch_event_time,
                         backend="cpu" | "gpu")
    out.reject            # int8 (B,): 0 = scheduled, else REJECTS[code] = (field, reason) -> DLQ
    out.shares            # int64 flat (CSR) child quantities: row i = offsets[i]:offsets[i+1]
    out.scores[...]       # SCORE_COLUMNS -> float64 (B,)    (orders.scored)
    out.row(i, id, sym)   # one row as a Schedule             (orders.schedule)

Job runner (phase 2, kind ``execsim``)::

    report = run_simulation(orders, params_by_symbol, tapes_by_symbol, config,
                            progress=lambda frac, msg: ..., should_stop=lambda: ...)
    report.table(), report.summary(), report.errors   # raises SimulationStopped(partial=report)

Parameters: :func:`estimate_params` / :func:`estimate_panel` / :func:`estimate_profile` from a
bar panel. Errors: :class:`ExecutionInputError` (``.field`` names the bad field),
:class:`ExecutionConfigError`, :class:`SimulationStopped`.
"""

from mystocks_gpu.gpu_ops.execution.exceptions import (
    ExecutionConfigError,
    ExecutionInputError,
    SimulationStopped,
)
from mystocks_gpu.gpu_ops.execution.exec_simulator import (
    SimReport,
    SimResult,
    Tape,
    run_simulation,
    simulate,
    simulate_order,
)
from mystocks_gpu.gpu_ops.execution.execution_config import ExecutionConfig
from mystocks_gpu.gpu_ops.execution.impact_models import (
    ac_expected_shortfall,
    ac_kappa,
    ac_trajectory,
    ac_variance,
    sigma_abs_per_sqrt_s,
    sqrt_impact_cost,
)
from mystocks_gpu.gpu_ops.execution.market_params import (
    MarketParams,
    SymbolModel,
    VolumeProfile,
    prepare,
)
from mystocks_gpu.gpu_ops.execution.param_estimate import (
    estimate_panel,
    estimate_params,
    estimate_profile,
)
from mystocks_gpu.gpu_ops.execution.parent_orders import (
    BUY,
    SELL,
    STRATEGIES,
    ParentOrder,
    Schedule,
    Score,
)
from mystocks_gpu.gpu_ops.execution.schedule_api import schedule, warm_up
from mystocks_gpu.gpu_ops.execution.schedule_batch import (
    REJECTS,
    SCORE_COLUMNS,
    BatchSchedules,
    OrderColumns,
    ParamsTable,
    schedule_batch,
)

__all__ = [
    "BUY",
    "REJECTS",
    "SCORE_COLUMNS",
    "SELL",
    "STRATEGIES",
    "BatchSchedules",
    "ExecutionConfig",
    "ExecutionConfigError",
    "ExecutionInputError",
    "MarketParams",
    "OrderColumns",
    "ParamsTable",
    "ParentOrder",
    "Schedule",
    "Score",
    "SimReport",
    "SimResult",
    "SimulationStopped",
    "SymbolModel",
    "Tape",
    "VolumeProfile",
    "ac_expected_shortfall",
    "ac_kappa",
    "ac_trajectory",
    "ac_variance",
    "estimate_panel",
    "estimate_params",
    "estimate_profile",
    "prepare",
    "run_simulation",
    "schedule",
    "schedule_batch",
    "sigma_abs_per_sqrt_s",
    "simulate",
    "simulate_order",
    "sqrt_impact_cost",
    "warm_up",
]
