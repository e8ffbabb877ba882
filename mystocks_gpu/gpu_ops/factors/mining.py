"""Factor mining: random and genetic search over expression trees, evaluated in batched passes.

Generation 0 is random (grow method, depth <= ``max_depth``); each later generation breeds from
the best ``elite`` fraction (by |mean rank IC| at ``MiningConfig.horizon``) by subtree mutation,
window / operator mutation, or subtree crossover, rejecting children deeper than ``max_depth`` and
expressions already seen. Candidates are evaluated ``batch`` at a time as one program (shared
subexpressions once) and measured with the :class:`Evaluator`'s definitions.

Selection, per generation, in decreasing |rank IC| (ties by canonical expression): keep a
candidate when |mean rank IC| >= ``min_abs_rank_ic``, |rank ICIR| >= ``min_abs_icir`` and its mean
rank correlation with every factor kept so far is below ``max_corr`` in absolute value, until
``max_kept``. All randomness comes from ``numpy.random.default_rng(seed)`` and all iteration is in
list order, so a seed gives the same kept set in every process (no dependence on hashing).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mystocks_gpu.gpu_ops.backend import select
from mystocks_gpu.gpu_ops.factors.config import EngineConfig, EvalConfig, MiningConfig
from mystocks_gpu.gpu_ops.factors.evaluate import (
    Evaluator,
    MetricsCpu,
    MetricsXp,
    make_metrics,
    rank_correlation,
)
from mystocks_gpu.gpu_ops.factors.exceptions import EvaluationStopped, FactorConfigError
from mystocks_gpu.gpu_ops.factors.expr import FIELD, Node, call, const
from mystocks_gpu.gpu_ops.factors.expr import field as field_node
from mystocks_gpu.gpu_ops.factors.factor_engine import CpuOps, ProgressFn, StopFn, XpOps, make_ops
from mystocks_gpu.gpu_ops.factors.ops import CS, ELEM, OPS, TS
from mystocks_gpu.gpu_ops.factors.panel import Panel
from mystocks_gpu.gpu_ops.factors.pipeline import batch_size, evaluate_batched

_QS = (0.2, 0.5, 0.8)
_POWERS = (0.5, 2.0)


class Grammar:
    """Random tree construction from the configured operators, fields and windows."""

    def __init__(self, cfg: MiningConfig, fields: Sequence[str], rng: np.random.Generator) -> None:
        self.cfg = cfg
        self.fields = list(fields)
        self.rng = rng
        self.ops = [o for o in cfg.ops if OPS[o].kind in (TS, CS, ELEM) and o != "If"]

    def _pick(self, seq: Sequence[Any]) -> Any:
        return seq[int(self.rng.integers(len(seq)))]

    def leaf(self) -> Node:
        return field_node(self._pick(self.fields))

    def window(self, op: str) -> int:
        ws = [w for w in self.cfg.windows if w >= OPS[op].min_window]
        return int(self._pick(ws or [max(self.cfg.windows)]))

    def node(self, op: str, args: list[Node]) -> Node:
        spec = OPS[op]
        params: tuple[float, ...] = ()
        if spec.kind == TS:
            params = (self.window(op),) + ((float(self._pick(_QS)),) if spec.n_float else ())
        if op == "Power":
            args = [args[0], const(self._pick(_POWERS))]
        return call(op, *args, params=params)

    def tree(self, depth: int) -> Node:
        """A random tree of depth <= ``depth`` (grow method: leaves with probability 0.3)."""
        if depth <= 1 or (depth < self.cfg.max_depth and self.rng.random() < 0.3):
            return self.leaf()
        op = self._pick(self.ops)
        n = OPS[op].n_expr if op != "Power" else 1
        return self.node(op, [self.tree(depth - 1) for _ in range(n)])


def _subtrees(n: Node, path: tuple[int, ...] = ()) -> list[tuple[tuple[int, ...], Node]]:
    out = [(path, n)]
    for i, a in enumerate(n.args):
        out += _subtrees(a, path + (i,))
    return out


def _replace(n: Node, path: tuple[int, ...], new: Node) -> Node:
    if not path:
        return new
    args = list(n.args)
    args[path[0]] = _replace(args[path[0]], path[1:], new)
    return call(n.op, *args, params=n.params)


def mutate(g: Grammar, parent: Node) -> Node:
    """A new random subtree in place of a random node, or a new window / same-kind operator."""
    subs = _subtrees(parent)
    path, sub = subs[int(g.rng.integers(len(subs)))]
    r = g.rng.random()
    if r < 0.3 and sub.op in OPS and OPS[sub.op].kind == TS:
        return _replace(parent, path, call(sub.op, *sub.args, params=(g.window(sub.op),) + sub.params[1:]))
    if r < 0.5 and sub.op in OPS:
        same = [o for o in g.ops if OPS[o].kind == OPS[sub.op].kind
                and OPS[o].n_expr == OPS[sub.op].n_expr and o != sub.op and o != "Power"]
        if same and sub.op != "Power":
            return _replace(parent, path, g.node(g._pick(same), list(sub.args)))
    room = g.cfg.max_depth - len(path)
    return _replace(parent, path, g.tree(max(1, room)))


def crossover(g: Grammar, a: Node, b: Node) -> Node:
    """``a`` with a random subtree replaced by a random subtree of ``b``."""
    sa, sb = _subtrees(a), _subtrees(b)
    path, _ = sa[int(g.rng.integers(len(sa)))]
    _, donor = sb[int(g.rng.integers(len(sb)))]
    return _replace(a, path, donor)


@dataclass
class Candidate:
    """One evaluated expression and its headline metrics at the mining horizon."""

    node: Node
    generation: int
    rank_ic: float
    rank_icir: float
    ic: float
    status: str
    ranks: Any = field(default=None, repr=False)

    @property
    def fitness(self) -> float:
        return abs(self.rank_ic) if self.rank_ic == self.rank_ic else -1.0


@dataclass
class MiningResult:
    """Kept factors (``kept``: ``name -> expression``, in keeping order), their metrics
    (``kept_table``), per-generation history, the number of candidates evaluated and seconds."""

    kept: dict[str, str]
    kept_table: pd.DataFrame
    history: pd.DataFrame
    n_evaluated: int
    seconds: float
    kept_nodes: list[Node] = field(default_factory=list, repr=False)

    @property
    def candidates_per_second(self) -> float:
        return self.n_evaluated / self.seconds if self.seconds > 0 else float("nan")


def _usable_fields(panel: Panel, engine_cfg: EngineConfig) -> list[str]:
    f = [k for k in engine_cfg.fields if k in panel.fields]
    if not f:
        raise FactorConfigError("the panel carries none of the configured fields")
    return f


def mine(
    panel: Panel,
    cfg: MiningConfig | None = None,
    engine_cfg: EngineConfig | None = None,
    eval_cfg: EvalConfig | None = None,
    *,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    ops: CpuOps | XpOps | None = None,
    metrics: MetricsCpu | MetricsXp | None = None,
) -> MiningResult:
    """Search for factors on ``panel`` (see the module docstring). ``eval_cfg.horizons`` must
    contain ``cfg.horizon``; the sample and rank IC follow :mod:`.evaluate`."""
    cfg = cfg or MiningConfig()
    engine_cfg = engine_cfg or EngineConfig()
    eval_cfg = eval_cfg or EvalConfig()
    if cfg.horizon not in eval_cfg.horizons:
        raise FactorConfigError(f"mining horizon {cfg.horizon} is not in horizons {eval_cfg.horizons}")
    hi = eval_cfg.horizons.index(cfg.horizon)
    backend = select(engine_cfg.backend)
    ops = ops if ops is not None else make_ops(backend, engine_cfg.threads)
    metrics = metrics if metrics is not None else make_metrics(backend, engine_cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    grammar = Grammar(cfg, _usable_fields(panel, engine_cfg), rng)
    ev = Evaluator(panel.field("close"), eval_cfg, impl=metrics)
    t_start = time.perf_counter()
    seen: dict[str, None] = {}
    kept: list[Candidate] = []
    kept_ranks: list[np.ndarray] = []
    history: list[dict[str, Any]] = []
    parents: list[Candidate] = []
    n_eval = 0
    hold = 4 * cfg.max_kept
    batch = cfg.batch or batch_size(panel, engine_cfg, eval_cfg)
    total = cfg.population * cfg.generations
    for gen in range(cfg.generations):
        pop: list[Node] = []
        tries = 0
        while len(pop) < cfg.population and tries < 50 * cfg.population:
            tries += 1
            if gen == 0 or not parents:
                cand = grammar.tree(cfg.max_depth)
            elif rng.random() < cfg.mutation_rate:
                cand = mutate(grammar, parents[int(rng.integers(len(parents)))].node)
            else:
                a = parents[int(rng.integers(len(parents)))].node
                b = parents[int(rng.integers(len(parents)))].node
                cand = crossover(grammar, a, b)
            if cand.depth > cfg.max_depth or cand.op == FIELD or cand.key in seen:
                continue
            if any(n.window > panel.n_dates for n in cand.walk()):
                continue
            seen[cand.key] = None
            pop.append(cand)
        gen_cands: list[Candidate] = []
        passing: list[Candidate] = []
        nodes = {n.key: n for n in pop}

        def consume(vals: dict[str, Any], gen: int = gen, nodes: dict[str, Node] = nodes,
                    gen_cands: list[Candidate] = gen_cands) -> None:
            nonlocal passing
            for key, v in vals.items():
                node = nodes[key]
                if not np.isfinite(v).any():
                    gen_cands.append(Candidate(node, gen, np.nan, np.nan, np.nan, "all_nan"))
                    continue
                ic, ric, _, _, _, rank = ev.per_factor(v)
                r = ric[hi][np.isfinite(ric[hi])]
                m = float(r.mean()) if r.size else np.nan
                s = float(r.std(ddof=1)) if r.size > 1 else np.nan
                icir = m / s if s and s == s else np.nan
                c = Candidate(node, gen, m, icir, float(np.nanmean(ic[hi])) if np.isfinite(ic[hi]).any()
                              else np.nan, "ok" if r.size else "no_valid_dates")
                gen_cands.append(c)
                if c.status == "ok" and abs(m) >= cfg.min_abs_rank_ic and abs(icir) >= cfg.min_abs_icir:
                    c.ranks = rank.astype(np.float32)
                    passing.append(c)
            passing.sort(key=lambda c: (-c.fitness, c.node.key))
            for c in passing[hold:]:
                c.ranks = None
            passing = passing[:hold]

        def prog(frac: float, msg: str, gen: int = gen) -> None:
            if progress is not None:
                progress(min(1.0, (gen + frac) * cfg.population / total), f"generation {gen}: {msg}")

        evaluate_batched(nodes, panel, engine_cfg, batch, ops, consume, prog, should_stop)
        n_eval += len(pop)
        n_kept_before = len(kept)
        for c in passing:
            if len(kept) >= cfg.max_kept:
                break
            if kept_ranks:
                corr = rank_correlation(c.ranks[None], np.stack(kept_ranks))[0]
                if np.any(np.abs(corr) >= cfg.max_corr):  # an undefined (NaN) correlation never rejects
                    continue
            kept.append(c)
            kept_ranks.append(c.ranks)
        gen_cands.sort(key=lambda c: (-c.fitness, c.node.key))
        n_par = max(1, int(round(cfg.elite * len(gen_cands))))
        parents = [c for c in gen_cands if c.status == "ok"][:n_par]
        history.append({"generation": gen, "evaluated": len(pop), "passing": len(passing),
                        "kept_new": len(kept) - n_kept_before, "kept_total": len(kept),
                        "best_abs_rank_ic": gen_cands[0].fitness if gen_cands else np.nan})
        if should_stop is not None and should_stop():
            raise EvaluationStopped("mining stopped on request")
        if len(kept) >= cfg.max_kept:
            break
    secs = time.perf_counter() - t_start
    table = pd.DataFrame([{"name": f"MINED{i + 1}", "expression": c.node.to_string(),
                           "generation": c.generation, "rank_ic": c.rank_ic,
                           "rank_icir": c.rank_icir, "ic": c.ic} for i, c in enumerate(kept)])
    return MiningResult({f"MINED{i + 1}": c.node.to_string() for i, c in enumerate(kept)}, table,
                        pd.DataFrame(history), n_eval, secs, [c.node for c in kept])
