"""Compile many factor expressions into one program and run it on a panel, on the CPU (numba) or
the GPU (CuPy), chunked by symbol within a memory budget.

:func:`compile_program` merges the trees of all factors into one DAG of unique nodes (common
subexpressions by canonical key are computed once) and cuts it into *stages* by the number of
cross-sectional operators above each node: stage ``k`` runs the element-wise and time-series
nodes with ``k`` cross-sectional ancestors-in-the-path per symbol chunk, then the cross-sectional
nodes that need stage ``k``'s results on every symbol. Nodes read by a later stage, and the
factors' outputs, are kept as full ``(n_symbols, n_dates)`` arrays; everything else lives only
while its chunk is being computed. The symbol chunk is the largest that keeps the full arrays plus
the chunk's peak working set within ``EngineConfig.memory_budget_bytes``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.backend import GPU, select, to_host, xp
from mystocks_gpu.gpu_ops.factors import cross_section, ts_cpu, ts_cpu_window, ts_xp
from mystocks_gpu.gpu_ops.factors.config import EngineConfig
from mystocks_gpu.gpu_ops.factors.elementwise import SCALAR_OK, apply_elementwise
from mystocks_gpu.gpu_ops.factors.exceptions import (
    EvaluationStopped,
    ExpressionError,
    FactorConfigError,
    PanelError,
)
from mystocks_gpu.gpu_ops.factors.expr import CONST, FIELD, Node
from mystocks_gpu.gpu_ops.factors.ops import CS, OPS, TS
from mystocks_gpu.gpu_ops.factors.panel import Panel
from mystocks_gpu.gpu_ops.factors.threads import run_blocks

ProgressFn = Callable[[float, str], None]
StopFn = Callable[[], bool]


# ---- operator implementations (CPU twin / GPU twin) ------------------------------------------
class CpuOps:
    """numba kernels (``ts_cpu``, ``ts_cpu_window``, ``cross_section.cs_cpu``) on NumPy arrays,
    run on blocks of rows in ``threads`` threads (0 = one per CPU)."""

    name = "cpu"
    xp: Any = np

    def __init__(self, threads: int = 0) -> None:
        self.threads = threads

    def ts(self, op: str, args: list[Any], params: tuple[float, ...]) -> Any:
        xs = [np.ascontiguousarray(a) for a in args]
        out = np.empty_like(xs[0])

        def block(a: int, b: int) -> None:
            self._ts(op, [x[a:b] for x in xs], params, out[a:b])

        run_blocks(block, out.shape[0], self.threads)
        return out

    def _ts(self, op: str, args: list[Any], params: tuple[float, ...], out: Any) -> Any:
        """Run the kernel of ``op`` on a block of rows, writing into ``out`` (same shape)."""
        w = int(params[0])
        x = args[0]
        if op == "Ref":
            return ts_cpu.ts_ref(x, w, out)
        if op == "Delta":
            return ts_cpu.ts_delta(x, w, out)
        if op in ("Sum", "Mean"):
            return ts_cpu.ts_sum(x, w, op == "Mean", out)
        if op in ("Std", "Var"):
            return ts_cpu.ts_var(x, w, op == "Std", out)
        if op in ("Corr", "Cov"):
            return ts_cpu.ts_cov(x, args[1], w, op == "Corr", out)
        if op == "EMA":
            return ts_cpu.ts_ema(x, w, out)
        if op == "Quantile":
            return ts_cpu_window.ts_quantile(x, w, float(params[1]), out)
        code = ts_cpu_window.SCAN_CODES[op]
        if op in ("Min", "Max", "IdxMin", "IdxMax"):
            return ts_cpu_window.ts_extreme(x, w, code, out)
        return ts_cpu_window.ts_scan(x, w, code, out)

    def elementwise(self, op: str, args: list[Any]) -> Any:
        """:func:`.elementwise.apply_elementwise` on blocks of rows in threads (NumPy releases
        the GIL) when every array argument is float64 of the same 2-D shape; one call otherwise."""
        arrays = [a for a in args if isinstance(a, np.ndarray)]
        shape: tuple[int, ...] = arrays[0].shape if arrays else ()
        if len(shape) != 2 or any(a.shape != shape or a.dtype != np.float64 for a in arrays):
            return apply_elementwise(np, op, args)
        out = np.empty(shape, dtype=np.float64)

        def block(a: int, b: int) -> None:
            apply_elementwise(np, op, [x[a:b] if isinstance(x, np.ndarray) else x for x in args],
                              out=out[a:b])

        run_blocks(block, shape[0], self.threads)
        return out

    def cs(self, op: str, x: Any) -> Any:
        out = np.empty_like(x)
        code = cross_section.CS_CODES[op]

        def block(a: int, b: int) -> None:
            out[:, a:b] = cross_section.cs_cpu(np.ascontiguousarray(x[:, a:b]), code)

        run_blocks(block, x.shape[1], self.threads)
        return out

    def scratch(self, node: Node) -> int:
        """Extra (n_symbols, n_dates) arrays a node needs while it runs."""
        return 2


class XpOps:
    """Array programs (``ts_xp``, ``cross_section.cs_xp``) over ``xp`` = CuPy (GPU) or NumPy."""

    def __init__(self, module: Any) -> None:
        self.xp = module
        self.name = "gpu" if module is not np else "xp-numpy"

    def ts(self, op: str, args: list[Any], params: tuple[float, ...]) -> Any:
        w, m = int(params[0]), self.xp
        if op == "Ref":
            return ts_xp.ts_ref(m, args[0], w)
        if op == "Delta":
            return ts_xp.ts_delta(m, args[0], w)
        if op in ("Sum", "Mean"):
            return ts_xp.ts_sum(m, args[0], w, op == "Mean")
        if op in ("Std", "Var"):
            return ts_xp.ts_var(m, args[0], w, op == "Std")
        if op in ("Corr", "Cov"):
            return ts_xp.ts_cov(m, args[0], args[1], w, op == "Corr")
        if op == "EMA":
            return ts_xp.ts_ema(m, args[0], w)
        if op == "Quantile":
            return ts_xp.ts_quantile(m, args[0], w, float(params[1]))
        return ts_xp.ts_scan(m, args[0], w, op)

    def elementwise(self, op: str, args: list[Any]) -> Any:
        """:func:`.elementwise.apply_elementwise` over ``xp``."""
        return apply_elementwise(self.xp, op, args)

    def cs(self, op: str, x: Any) -> Any:
        return cross_section.cs_xp(self.xp, x, op)

    def scratch(self, node: Node) -> int:
        if node.op == "Quantile":
            return node.window + 3
        return 6 if OPS.get(node.op) is not None and OPS[node.op].kind == TS else 2


def make_ops(backend: str, threads: int = 0) -> CpuOps | XpOps:
    """The operator implementation of a resolved backend (``cpu`` -> numba, ``gpu`` -> CuPy)."""
    return XpOps(xp(GPU)) if backend == GPU else CpuOps(threads)


# ---- compilation ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Program:
    """A compiled set of factors. ``nodes`` are unique and topologically ordered; ``args[i]``
    indexes ``nodes``; ``roots`` maps factor name -> node index; ``stages`` lists, per stage,
    the chunked node indices and then the cross-sectional node indices; ``keep[i]`` marks nodes
    held as full arrays; ``owner[i]`` names a factor that uses node ``i`` (for messages)."""

    nodes: tuple[Node, ...]
    args: tuple[tuple[int, ...], ...]
    roots: dict[str, int]
    stages: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]
    keep: tuple[bool, ...]
    owner: tuple[str, ...]
    frees: tuple[tuple[int, ...], ...]  # transient args whose last chunked use is node i
    peak_transient: int

    @property
    def n_unique(self) -> int:
        return len(self.nodes)

    def fields(self) -> list[str]:
        return sorted({n.name for n in self.nodes if n.op == FIELD})

    def has_cross_section(self) -> bool:
        return any(n.op in OPS and OPS[n.op].kind == CS for n in self.nodes)

    def max_window(self) -> int:
        return max((n.window for n in self.nodes), default=0)


def compile_program(exprs: Mapping[str, Node]) -> Program:
    """Merge the expressions into one DAG with common subexpressions computed once."""
    index: dict[str, int] = {}
    nodes: list[Node] = []
    owner: list[str] = []
    args: list[tuple[int, ...]] = []
    roots: dict[str, int] = {}
    for name, root in exprs.items():
        for n in root.walk():
            if n.key not in index:
                index[n.key] = len(nodes)
                nodes.append(n)
                owner.append(name)
                args.append(tuple(index[a.key] for a in n.args))
        roots[name] = index[root.key]
    level = [0] * len(nodes)
    is_cs = [n.op in OPS and OPS[n.op].kind == CS for n in nodes]
    for i, a in enumerate(args):
        level[i] = max((level[j] for j in a), default=0) + (1 if is_cs[i] else 0)
    n_lv = max(level, default=0) + 1
    chunked: list[list[int]] = [[] for _ in range(n_lv)]
    cs_after: list[list[int]] = [[] for _ in range(n_lv)]
    for i, n in enumerate(nodes):
        if n.op in (FIELD, CONST):
            continue
        if is_cs[i]:
            cs_after[level[i] - 1].append(i)
        else:
            chunked[level[i]].append(i)
    stage_of = {i: (level[i] if not is_cs[i] else level[i] - 0.5) for i in range(len(nodes))}
    keep = [False] * len(nodes)
    for r in roots.values():
        keep[r] = True
    for i, a in enumerate(args):
        for j in a:
            if nodes[j].op in (FIELD, CONST):
                continue
            if is_cs[i] or is_cs[j] or stage_of[j] != stage_of[i]:
                keep[j] = True
    # transient lifetimes within each chunked stage
    frees: list[list[int]] = [[] for _ in nodes]
    peak = 0
    for st in chunked:
        last: dict[int, int] = {}
        for i in st:
            for j in args[i]:
                if nodes[j].op in (FIELD, CONST) or keep[j] or is_cs[j]:
                    continue
                last[j] = i
        for j, i in last.items():
            frees[i].append(j)
        live = 0
        for i in st:
            live += 1
            peak = max(peak, live)
            live -= len(frees[i]) + (1 if keep[i] else 0)
    return Program(tuple(nodes), tuple(args), roots,
                   tuple((tuple(c), tuple(s)) for c, s in zip(chunked, cs_after, strict=True)),
                   tuple(keep), tuple(owner), tuple(tuple(f) for f in frees), peak)


def check_program(prog: Program, panel: Panel) -> None:
    """Raise :class:`ExpressionError` / :class:`PanelError` for a program the panel cannot run:
    a window longer than the data, a missing field, or a cross-sectional op on one symbol."""
    for i, n in enumerate(prog.nodes):
        if n.window > panel.n_dates:
            raise ExpressionError(
                f"factor {prog.owner[i]!r}: window {n.window} of {n.op} in {n.to_string()} is "
                f"longer than the data ({panel.n_dates} dates)")
        if n.op == FIELD and n.name not in panel.fields:
            panel.field(n.name)
    if prog.has_cross_section() and panel.n_symbols < 2:
        cs = next(i for i, n in enumerate(prog.nodes) if n.op in OPS and OPS[n.op].kind == CS)
        raise PanelError(
            f"factor {prog.owner[cs]!r} uses the cross-sectional operator {prog.nodes[cs].op}, "
            f"which needs at least 2 symbols; the universe has {panel.n_symbols}")


def plan_chunk_symbols(prog: Program, panel: Panel, ops: CpuOps | XpOps, budget: int) -> int:
    """Symbols per chunk so that full arrays + the chunk's working set fit ``budget`` bytes."""
    col = panel.n_dates * 8
    n_full = len(prog.fields()) + sum(prog.keep)
    full = n_full * panel.n_symbols * col
    scratch = max((ops.scratch(n) for n in prog.nodes), default=1)
    per_symbol = col * (prog.peak_transient + scratch + 1)
    room = budget - full
    if room < per_symbol:
        need = full + per_symbol
        raise FactorConfigError(
            f"memory budget {budget:,} B is too small: {len(prog.roots)} factors need "
            f"{full:,} B of full arrays plus {per_symbol:,} B per symbol chunk (at least "
            f"{need:,} B); evaluate fewer factors per pass or raise memory_budget_bytes")
    return int(min(panel.n_symbols, room // per_symbol))


# ---- execution --------------------------------------------------------------------------------
def run_program(
    prog: Program,
    panel: Panel,
    ops: CpuOps | XpOps,
    budget: int,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> dict[str, Any]:
    """Run a compiled program: ``name -> (n_symbols, n_dates)`` arrays on the ops' device."""
    check_program(prog, panel)
    m = ops.xp
    s_n, t_n = panel.n_symbols, panel.n_dates
    chunk = plan_chunk_symbols(prog, panel, ops, budget)
    full: dict[int, Any] = {}
    for i, n in enumerate(prog.nodes):
        if n.op == FIELD:
            full[i] = m.asarray(np.ascontiguousarray(panel.field(n.name).T))
    n_steps = sum(len(c) * -(-s_n // chunk) + len(s) for c, s in prog.stages) or 1
    done = 0

    def const_arr(i: int, rows: int) -> Any:
        return m.full((rows, t_n), prog.nodes[i].value)

    # one chunk of every symbol: a kept node's result is its full array (no copy)
    whole = chunk >= s_n
    for chunked, cs_nodes in prog.stages:
        for i in chunked:
            if prog.keep[i] and not whole:
                full[i] = m.empty((s_n, t_n))
        for s0 in range(0, s_n, chunk):
            s1 = min(s_n, s0 + chunk)
            if should_stop is not None and should_stop():
                raise EvaluationStopped("factor evaluation stopped on request")
            env: dict[int, Any] = {}
            for i in chunked:
                node = prog.nodes[i]
                kind = OPS[node.op].kind
                # a binary element-wise op with an array argument takes its constant as a scalar
                scalars = node.op in SCALAR_OK and any(prog.nodes[j].op != CONST
                                                       for j in prog.args[i])
                vals = [env[j] if j in env else
                        ((prog.nodes[j].value if scalars else const_arr(j, s1 - s0))
                         if prog.nodes[j].op == CONST else full[j][s0:s1])
                        for j in prog.args[i]]
                if kind == TS:
                    res = ops.ts(node.op, vals, node.params)
                else:
                    res = ops.elementwise(node.op, vals)
                    if res.shape != (s1 - s0, t_n):
                        res = m.broadcast_to(res, (s1 - s0, t_n)).copy()
                if prog.keep[i] and whole:
                    full[i] = res
                elif prog.keep[i]:
                    full[i][s0:s1] = res
                else:
                    env[i] = res
                for j in prog.frees[i]:
                    env.pop(j, None)
            done += len(chunked)
            if progress is not None:
                progress(done / n_steps, f"evaluated symbols {s0}-{s1 - 1}")
        for i in cs_nodes:
            j = prog.args[i][0]
            src = const_arr(j, s_n) if prog.nodes[j].op == CONST else full[j]
            full[i] = ops.cs(prog.nodes[i].op, src)
            done += 1
        # drop full arrays no later node needs
        needed = {j for st in prog.stages for k in st[0] + st[1] for j in prog.args[k]}
        for i in list(full):
            if prog.nodes[i].op != FIELD and i not in needed and i not in prog.roots.values():
                del full[i]
    out: dict[str, Any] = {}
    for name, r in prog.roots.items():
        node = prog.nodes[r]
        if node.op == CONST:
            out[name] = const_arr(r, s_n)
        else:
            out[name] = full[r]
    return out


def evaluate_panel(
    exprs: Mapping[str, Node],
    panel: Panel,
    cfg: EngineConfig | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    ops: CpuOps | XpOps | None = None,
) -> dict[str, np.ndarray]:
    """Evaluate parsed factors on a panel: ``name -> float64 (n_dates, n_symbols)`` host arrays.

    All factors run as one program (shared subexpressions once). ``ops`` overrides the backend's
    implementation (tests pass ``XpOps(numpy)`` to run the GPU code path on the CPU).
    Raises :class:`ExpressionError` for a window longer than the data, :class:`PanelError` for a
    missing field or a cross-sectional op on a single symbol, :class:`EvaluationStopped`.
    """
    cfg = cfg or EngineConfig()
    impl = ops if ops is not None else make_ops(select(cfg.backend), cfg.threads)
    prog = compile_program(exprs)
    res = run_program(prog, panel, impl, cfg.memory_budget_bytes, progress, should_stop)
    return {k: to_host(v).T for k, v in res.items()}
