"""GPU implementation of the tick-feature engine, twin of ``features_cpu``: chunked replay.

The CUDA source is ``features_chunks.cu`` + ``features_trades.cu`` (the first's header lists the
passes). The batch's rows are
cut into row blocks of ``2**log_r`` rows; a *chunk* is one symbol's rows inside one row block, in
arrival order. The rows are grouped chunk by chunk (a shared-memory counting sort, or the device
sort of :func:`group_chunks`); per chunk, the accepted trades fold into affine maps (EMAs, MACD,
Wilder RSI) and sums (VWAP), composed per symbol into every chunk's entry state; the trade-count
and time-window statistics run one thread per trade over a symbol-major trade list (a ``tf`` row
per trade); every chunk replays its accepted trades in parallel with the CPU twin's arithmetic
from its entry state (a ``tt`` row per trade); and a last pass, one thread per row, writes the
(K, n) outputs in row order from the ``tt`` / ``tf`` rows of each row's last accepted trade and
the row's own quote. So the outputs are written once, coalesced, and the per-trade tables are
read back once (the replay used to stage one row of outputs per row and permute them: 23.3 ms
on an H200 for 20M ticks, now 9.9 ms).

Agreement with the CPU: inside one row block (every batch of at most ``2**log_r`` rows: the
streaming case) the arithmetic is the CPU's statement by statement (``--fmad=false``), so only
``log`` rounding may differ. A chunk behind another of its symbol in the same batch starts from
composed maps, a few ulps of the price away from the CPU's sequential values; they stay within
the engine's documented tolerance (rtol 1e-9, atol 1e-12 plus a few ulps of the price where a
difference of two EMAs cancels: ``macd``, ``macd_signal``, ``macd_hist``).

The host code takes an array module and a kernel launcher, so the unit tests run the very same
orchestration with NumPy and the kernels compiled as C, one thread after another
(``tests/unit/features_emu.py``). CuPy is imported lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.features_config import (
    IS_NTRADES,
    IS_SESSION,
    IS_TCLOCK,
    N_FIXED,
    N_IST,
    NS_PER_DAY,
    SC_CUM_PV,
    SC_CUM_V,
    SC_EMA0,
    SC_MACD_FAST,
    SC_MACD_SIG,
    SC_MACD_SLOW,
    SC_PREV,
    SC_RSI_GAIN,
    SC_RSI_LOSS,
    SLOT,
)

#: the CUDA source, in compile order
KERNEL_FILES = ("features_chunks.cu", "features_trades.cu")
#: log2 of the row block: a batch of at most 2**16 rows is one block (CPU arithmetic exactly)
ROW_BLOCK_LOG2 = 16
#: the largest row block (a grouped row's rank has 22 bits)
MAX_ROW_BLOCK_LOG2 = 22
#: the fused grouping keeps 4 bytes per symbol in shared memory: at most this many symbols
GROUP_MAX_SYMBOLS = 49_152
#: log2 of the fused grouping's sub-block (rows one CUDA block places)
GROUP_SUB_LOG2 = 13
#: "no trade yet" clock value
NONE_T = -(2**63)
#: the fused grouping's kernels (launched before ``fx_gather`` where the launcher has ``blocks``)
GROUP_KERNELS = ("fx_hist", "fx_offsets", "fx_scatter")
#: kernels in launch order, each with what one thread handles (the fused grouping,
#: :data:`GROUP_KERNELS`, or the sort of :func:`group_chunks` comes first)
KERNELS: tuple[tuple[str, str], ...] = (
    ("fx_gather", "row"),
    ("fx_clock", "symbol"),
    ("fx_summary", "chunk"),
    ("fx_carry", "symbol"),
    ("fx_compact", "row"),
    ("fx_lr", "row"),
    ("fx_window", "row"),
    ("fx_replay", "chunk"),
    ("fx_state", "symbol"),
    ("fx_final", "row"),
)

# parameter block: device pointers, then scalars (doubles as their int64 bits)
_PTRS = (
    "GIDX", "COFF", "SYM", "TS", "KIND", "PRICE", "SIZE", "SIDE", "BID", "ASK", "BSZ", "ASZ",
    "GROW", "META", "TMAX", "CLK", "CS", "CI", "SYMI", "LI", "MR", "TT",
    "FEAT", "FEAT_NEW", "SC", "IST", "R_PRICE", "R_SIZE", "R_FLOW", "R_RET", "NR_PRICE",
    "NR_SIZE", "NR_FLOW", "NR_RET", "T_TS", "T_PRICE", "NT_TS", "NT_PRICE", "EMA_ALPHA",
    "MACD_ALPHA", "OUT", "REJ", "SBASE", "TL_SYM", "TL_TS", "TL_PRICE", "TL_SIZE",
    "TL_FLOW", "TL_LR", "TF", "HIST",
)
_SCALARS = (
    "N", "S", "NB", "NCH", "LOG_R", "SUB", "NSC", "WINDOW_NS", "CAP", "RSI_P", "SESS_ON", "SESS_OFF",
    "DO_TIME", "DO_ROLL", "MAX_DIS", "BOLL_K", "RVOL_SCALE",
)
_PARAMS = _PTRS + _SCALARS
# per-chunk float64 fields (rows of ``cs``): the chunk's maps/sums, then its entry state
_CS_FIXED = (
    "FIRST_P", "LAST_P", "AF", "BF", "AS", "BS", "A3", "CF", "CS", "B3", "AG", "BG", "AL", "BL",
    "HPV", "HV", "TPV", "TV", "PREV", "CUMPV", "CUMV", "F", "SL", "SG", "G", "L",
)
# per-chunk int64 fields (rows of ``ci``)
_CI = ("M", "LASTOK", "CHANGED", "SID_FIRST", "SID_LAST", "NIN", "SESS", "LASTOK_IN")
# per-symbol int64 bookkeeping (rows of ``symi``)
_SY = ("N0", "NFIN", "LASTCHUNK", "LASTTR", "LASTOK")
# per-trade window features (a row of ``tf`` per trade, 96 bytes = 3 memory sectors; the time
# window's two after the trade-count window's eight)
# the window slots in ``tf`` order (the first eight need do_roll, the last two do_time)
_TF_SLOTS = ("roll_mean", "roll_std", "roll_z", "boll_upper", "boll_lower", "vwap_roll",
             "flow_imb", "rvol", "time_mean", "time_std")
_TF = (*(name.upper() for name in _TF_SLOTS), "PAD0", "PAD1")
# the slots of the O(1) recursions, in ``tt`` order (then one per EMA span): the replay's
# per-trade row
_TT_SLOTS = ("last_price", "ret", "log_ret", "vwap_session", "rsi", "macd", "macd_signal",
             "macd_hist")
#: bytes of one grouped row record (``GRow`` in the CUDA source)
GROW_BYTES = 32
_MICRO = ("spread", "rel_spread", "book_imb")


def n_trade_slots(n_ema: int) -> int:
    """Doubles per row of the per-trade table ``tt``: the O(1) recursions' slots (8 + one per
    EMA span), rounded up to whole 32-byte memory sectors."""
    return -(-(len(_TT_SLOTS) + n_ema) // 4) * 4


def n_chunk_fields(n_ema: int) -> int:
    """Rows of the per-chunk float64 table for ``n_ema`` EMA spans."""
    return len(_CS_FIXED) + 3 * n_ema


def kernel_defines(n_ema: int, n_win: int, col_idx: tuple[int, ...]) -> dict[str, Any]:
    """Every ``#define`` the CUDA source needs: slots, state columns, table and parameter
    indexes, the compile-time sizes ``N_EMA``, ``NSLOTS``, ``NW``, ``NTT``, and the generated
    statements ``WRITE_TT`` (a trade's O(1) slots into its ``tt`` row), ``READ_TT`` /
    ``READ_ROLL`` / ``READ_TIME`` (the ``tt`` / ``tf`` rows back into slots) and ``FINAL_OUT``
    (the selected outputs of one row; ``col_idx`` = ``FeatureConfig.column_index()``)."""
    k = len(_CS_FIXED)
    micro = {SLOT[name]: m for m, name in enumerate(_MICRO)}
    tt = {SLOT[name]: q for q, name in enumerate(_TT_SLOTS)}
    tt.update({N_FIXED + j: len(_TT_SLOTS) + j for j in range(n_ema)})
    tf = {SLOT[name]: q for q, name in enumerate(_TF_SLOTS)}
    roll = {SLOT[name] for name in _TF_SLOTS[:8]}

    sel = [(slot, c) for slot, c in enumerate(col_idx) if c >= 0]

    def stores(slots: list[tuple[int, int]], src: Any) -> str:
        return " ".join(f"(out)[{c}LL * (n) + (r)] = {src(slot)};" for slot, c in slots)

    def part(kind: Any) -> list[tuple[int, int]]:
        return [(slot, c) for slot, c in sel if kind(slot)]

    def from_fo(slot: int) -> str:
        return f"(fo)[{slot}]"

    # fx_final's stores of one row, in branches that read only what they store: the micro
    # values M; with a trade (ht), its tt row T and, where computed (hr / hw), its tf row W; the
    # old feature vector fo for the rest
    scal = part(lambda slot: slot in tt)
    rolls = part(lambda slot: slot in roll)
    times = part(lambda slot: slot in tf and slot not in roll)
    final = (
        f"if (ht) {{ {stores(scal, lambda slot: f'(T)[{tt[slot]}]')} "
        f"if (hr) {{ {stores(rolls, lambda slot: f'(W)[{tf[slot]}]')} }} "
        f"else {{ {stores(rolls, from_fo)} }} "
        f"if (hw) {{ {stores(times, lambda slot: f'(W)[{tf[slot]}]')} }} "
        f"else {{ {stores(times, from_fo)} }} }} "
        f"else {{ {stores(scal + rolls + times, from_fo)} }} "
        + stores(part(lambda slot: slot in micro), lambda slot: f"(M)[{micro[slot]}]"))
    by_q = {q: f"(F)[{slot}]" for slot, q in tt.items()}
    write_tt = " ".join(
        f"ST2((row) + {q}, {by_q.get(q, '0.0')}, {by_q.get(q + 1, '0.0')});"
        for q in range(0, n_trade_slots(n_ema), 2))
    read_tt = " ".join(f"(F)[{slot}] = (tt)[{q}];" for slot, q in tt.items())
    read_roll = " ".join(f"(F)[{slot}] = (tf)[{q}];" for slot, q in tf.items() if slot in roll)
    read_time = " ".join(f"(F)[{slot}] = (tf)[{q}];" for slot, q in tf.items() if slot not in roll)
    return {
        "IS_NTRADES": IS_NTRADES, "IS_SESSION": IS_SESSION, "IS_TCLOCK": IS_TCLOCK,
        "N_IST": N_IST, "N_FIXED": N_FIXED, "DAY_NS": f"{NS_PER_DAY}LL",
        "SC_PREV": SC_PREV, "SC_CUM_PV": SC_CUM_PV, "SC_CUM_V": SC_CUM_V,
        "SC_MACD_FAST": SC_MACD_FAST, "SC_MACD_SLOW": SC_MACD_SLOW, "SC_MACD_SIG": SC_MACD_SIG,
        "SC_RSI_GAIN": SC_RSI_GAIN, "SC_RSI_LOSS": SC_RSI_LOSS, "SC_EMA0": SC_EMA0,
        **{f"F_{name.upper()}": v for name, v in SLOT.items()},
        **{f"PI_{name}": i for i, name in enumerate(_PARAMS)},
        **{f"CS_{name}": i for i, name in enumerate(_CS_FIXED)},
        "CS_EMA_A0": k, "CS_EMA_B0": k + n_ema, "CS_E0": k + 2 * n_ema,
        **{f"CI_{name}": i for i, name in enumerate(_CI)},
        **{f"SY_{name}": i for i, name in enumerate(_SY)},
        **{f"TF_{name}": i for i, name in enumerate(_TF)}, "NTF": len(_TF),
        "N_EMA": n_ema, "NSLOTS": N_FIXED + n_ema, "NW": n_win, "NONE_T": f"({NONE_T + 1}LL - 1)",
        "NTT": n_trade_slots(n_ema),
        "WRITE_TT(row, F)": f"do {{ {write_tt} }} while (0)",
        "READ_TT(F, tt)": f"do {{ {read_tt} }} while (0)",
        "READ_ROLL(F, tf)": f"do {{ {read_roll} }} while (0)",
        "READ_TIME(F, tf)": f"do {{ {read_time} }} while (0)",
        "FINAL_OUT(out, n, r, M, T, W, ht, hr, hw, fo)": f"do {{ {final} }} while (0)",
    }


#: the source's tuning switches and their defaults, defined here only (the ``.cu`` files say
#: what each does)
TUNING = {"FX_SUMMARY_PF": 1, "FX_WINDOW_SPLIT": 1}


def kernel_source(n_ema: int, n_win: int, col_idx: tuple[int, ...],
                  tuning: tuple[tuple[str, int], ...] = ()) -> str:
    """The CUDA (or, without ``__CUDACC__``, C) source: ``#define`` lines, then the kernels;
    ``tuning``: values of :data:`TUNING` switches other than the defaults."""
    unknown = [k for k, _ in tuning if k not in TUNING]
    if unknown:
        raise ValueError(f"unknown tuning switch(es) {unknown}; known: {sorted(TUNING)}")
    defines = "\n".join(
        f"#define {k} {v}"
        for k, v in {**kernel_defines(n_ema, n_win, col_idx), **TUNING, **dict(tuning)}.items())
    here = resources.files("mystocks_gpu.gpu_ops")
    body = "\n".join(here.joinpath(f).read_text() for f in KERNEL_FILES)
    return defines + "\n" + body


@dataclass(frozen=True)
class Launcher:
    """Where the kernels run: ``xp`` (the array module), ``ptr`` (an array's address),
    ``launch(name, threads, params)`` (run kernel ``name`` over ``threads`` thread indexes with
    the int64 parameter block ``params``, an ``xp`` array made once per batch) and, where the
    device has it,
    ``blocks(name, n_blocks, threads_per_block, shared_bytes, params)``: a launch by CUDA blocks
    for the fused grouping kernels ``fx_hist`` / ``fx_scatter`` (without it the rows are
    grouped by a device sort, :func:`group_chunks`, and gathered by ``fx_gather``);
    ``mark(label)``, where given, is called before each stretch of array-module work between
    kernels (``bench/gpu_ops.py --profile`` times those stretches)."""

    xp: Any
    ptr: Callable[[Any], int]
    launch: Callable[[str, int, Any], None]
    blocks: Callable[[str, int, int, int, Any], None] | None = None
    mark: Callable[[str], None] | None = None


#: register cap of the kernels (``--maxrregcount``; None: the compiler's choice)
MAX_REGISTERS: int | None = None
#: threads per block of the per-row / chunk / symbol kernels
BLOCK = 128


@lru_cache(maxsize=16)
def _module(n_ema: int, n_win: int, col_idx: tuple[int, ...], max_registers: int | None,
            tuning: tuple[tuple[str, int], ...]) -> Any:
    import cupy as cp

    options: tuple[str, ...] = ("--fmad=false",)
    if max_registers:
        options += (f"--maxrregcount={max_registers}",)
    return cp.RawModule(code=kernel_source(n_ema, n_win, col_idx, tuning), options=options)


@lru_cache(maxsize=16)
def gpu_launcher(n_ema: int, n_win: int, col_idx: tuple[int, ...], block: int = BLOCK,
                 max_registers: int | None = MAX_REGISTERS,
                 tuning: tuple[tuple[str, int], ...] = ()) -> Launcher:
    """The CuPy launcher (kernels compiled once per ``(n_ema, n_win, col_idx, max_registers,
    tuning)``); ``block``: threads per block of the per-row/chunk/symbol kernels;
    ``max_registers``: the compiler's register cap; ``tuning``: :data:`TUNING` switches
    (bench/gpu_ops.py sweeps all three)."""
    import cupy as cp

    mod = _module(n_ema, n_win, col_idx, max_registers, tuning)

    def launch(name: str, threads: int, params: Any) -> None:
        if threads > 0:
            mod.get_function(name)(((threads + block - 1) // block,), (block,), (params,))

    def blocks(name: str, n_blocks: int, threads: int, shared: int, params: Any) -> None:
        fn = mod.get_function(name)
        if shared > 48 * 1024:
            fn.max_dynamic_shared_size_bytes = shared
        fn((n_blocks,), (threads,), (params,), shared_mem=shared)

    return Launcher(cp, lambda a: int(a.data.ptr), launch, blocks)


def group_chunks(xp: Any, sym: Any, n_symbols: int, log_r: int) -> tuple[Any, Any]:
    """Rows listed chunk by chunk (chunk = row block ``row >> log_r`` x symbol), arrival order
    inside a chunk.

    Args:
        xp: NumPy or CuPy.
        sym: int32 (n,) symbol codes in ``[0, n_symbols)``.
        n_symbols: S.
        log_r: log2 of the row block.

    Returns:
        ``gidx`` int32 (n,): row indexes, chunk by chunk; ``coff`` int64 (nb * S + 1,): chunk
        ``c = b * S + s`` owns ``gidx[coff[c]:coff[c + 1]]``.
    """
    n = int(sym.shape[0])
    nch = (((n - 1) >> log_r) + 1) * n_symbols
    if n >= 2**31 or nch >= 2**31:
        raise ValueError(f"batch of {n:,} rows x {n_symbols:,} symbols is too large for one call")
    rows = xp.arange(n, dtype=xp.int64)
    chunk = (rows >> log_r) * n_symbols + sym.astype(xp.int64)
    key = xp.sort((chunk << 32) | rows)
    gidx = (key & 0xFFFFFFFF).astype(xp.int32)
    coff = xp.zeros(nch + 1, dtype=xp.int64)
    coff[1:] = xp.cumsum(xp.bincount(chunk, minlength=nch))
    return gidx, coff


def process_batch_gpu(
    cols: Any,
    st: dict[str, Any],
    ema_alpha: Any,
    macd_alpha: Any,
    params: dict[str, Any],
    col_idx: Any,
    n_out: int,
    *,
    log_r: int = ROW_BLOCK_LOG2,
    launcher: Launcher | None = None,
    sub_log2: int = GROUP_SUB_LOG2,
) -> tuple[Any, Any]:
    """Run the feature kernels on a device batch; updates the ``st`` arrays in place.

    Args:
        cols: :class:`~mystocks_gpu.gpu_ops.tick_columns.TickColumns` of CuPy arrays, n rows.
        st: the state arrays (CuPy), named and shaped as in ``features_cpu``.
        ema_alpha, macd_alpha: float64 (n_spans,), (3,).
        params: ``n_win, window_ns, cap, rsi_p, sess_on, sess_off, do_time, do_roll, boll_k,
            rvol_scale, max_disorder`` (host scalars).
        col_idx: host int sequence (n_slots,), ``FeatureConfig.column_index()`` (compiled into
            the kernels' output stores).
        n_out: K, output rows.
        log_r: log2 of the row block (tests use small blocks to cut batches into many chunks).
        launcher: where the kernels run (default: CuPy on the current device).
        sub_log2: log2 of the fused grouping's sub-block (at most ``log_r`` is used).

    Returns:
        ``out`` float64 (K, n): outputs in input row order; ``rej`` int8 (n,): 1 for a trade
        rejected as too far behind its symbol's trade clock.
    """
    n_ema, n_win = int(ema_alpha.shape[0]), int(params["n_win"])
    if not 0 <= log_r <= MAX_ROW_BLOCK_LOG2:
        raise ValueError(f"log_r must be in [0, {MAX_ROW_BLOCK_LOG2}], got {log_r}")
    cols_sel = tuple(int(c) for c in col_idx)
    L = launcher or gpu_launcher(n_ema, n_win, cols_sel)
    mark = L.mark or (lambda label: None)
    mark("setup")
    xp = L.xp
    n = len(cols)
    out = xp.empty((n_out, n), dtype=xp.float64)
    rej = xp.zeros(n, dtype=xp.int8)
    if n == 0:
        return out, rej
    feat = st["feat"]
    S = int(feat.shape[0])
    nb = ((n - 1) >> log_r) + 1
    nch = nb * S
    fused = L.blocks is not None and S <= GROUP_MAX_SYMBOLS
    sub = 1 << min(log_r, sub_log2)
    per_block = (1 << log_r) // sub
    hist = xp.empty((nb * per_block if fused else 0, S), dtype=xp.int32)
    if fused:
        gidx = xp.empty(n, dtype=xp.int32)
        coff = xp.zeros(nch + 1, dtype=xp.int64)
    else:
        gidx, coff = group_chunks(xp, cols.sym, S, log_r)
    # the kernels read the batch's entry state from copies and write the new state in place (a
    # ring slot read as an old trade may be rewritten by a new one)
    old = {k: st[k].copy() for k in ("feat", "r_price", "r_size", "r_flow", "r_ret", "t_ts",
                                     "t_price")}
    tmp = {
        "GROW": xp.empty(n * GROW_BYTES // 8, dtype=xp.int64),
        "META": xp.empty(n, dtype=xp.uint32),
        "TMAX": xp.full(nch, NONE_T, dtype=xp.int64), "CLK": xp.empty(nch, dtype=xp.int64),
        "CS": xp.empty((n_chunk_fields(n_ema), nch), dtype=xp.float64),
        "CI": xp.empty((len(_CI), nch), dtype=xp.int64),
        "SYMI": xp.empty((len(_SY), S), dtype=xp.int64),
        "HIST": hist, "LI": xp.empty(n, dtype=xp.int32), "MR": xp.empty(n, dtype=xp.int32),
        "SBASE": xp.zeros(S + 1, dtype=xp.int64), "TL_SYM": xp.empty(n, dtype=xp.int32),
        "TL_TS": xp.empty(n, dtype=xp.int64), "TL_PRICE": xp.empty(n, dtype=xp.float64),
        "TL_SIZE": xp.empty(n, dtype=xp.float64), "TL_FLOW": xp.empty(n, dtype=xp.float64),
        "TL_LR": xp.empty(n, dtype=xp.float64), "TF": xp.empty((n, len(_TF)), dtype=xp.float64),
        "TT": xp.empty((n, n_trade_slots(n_ema)), dtype=xp.float64),
    }
    arrays = {
        "GIDX": gidx, "COFF": coff, "SYM": cols.sym, "TS": cols.ts, "KIND": cols.kind,
        "PRICE": cols.price, "SIZE": cols.size, "SIDE": cols.side, "BID": cols.bid,
        "ASK": cols.ask, "BSZ": cols.bid_size, "ASZ": cols.ask_size, **tmp,
        "FEAT": old["feat"], "FEAT_NEW": feat, "SC": st["sc"], "IST": st["ist"],
        "R_PRICE": old["r_price"], "R_SIZE": old["r_size"], "R_FLOW": old["r_flow"],
        "R_RET": old["r_ret"], "NR_PRICE": st["r_price"], "NR_SIZE": st["r_size"],
        "NR_FLOW": st["r_flow"], "NR_RET": st["r_ret"], "T_TS": old["t_ts"],
        "T_PRICE": old["t_price"], "NT_TS": st["t_ts"], "NT_PRICE": st["t_price"],
        "EMA_ALPHA": ema_alpha, "MACD_ALPHA": macd_alpha, "OUT": out,
        "REJ": rej,
    }
    scalars = {
        "N": n, "S": S, "NB": nb, "NCH": nch, "LOG_R": log_r, "SUB": sub, "NSC": int(st["sc"].shape[1]),
        "WINDOW_NS": int(params["window_ns"]), "CAP": int(params["cap"]),
        "RSI_P": int(params["rsi_p"]), "SESS_ON": int(params["sess_on"]),
        "SESS_OFF": int(params["sess_off"]), "DO_TIME": int(params["do_time"]),
        "DO_ROLL": int(params["do_roll"]), "MAX_DIS": int(params["max_disorder"]),
        "BOLL_K": int(np.float64(params["boll_k"]).view(np.int64)),
        "RVOL_SCALE": int(np.float64(params["rvol_scale"]).view(np.int64)),
    }
    mark("parameters")
    block = xp.asarray(np.array([L.ptr(arrays[k]) for k in _PTRS] + [scalars[k] for k in _SCALARS],
                                dtype=np.int64))  # one upload per batch
    threads = {"row": n, "symbol": S, "chunk": nch}
    for name, per in KERNELS:
        if name == "fx_gather" and fused:
            assert L.blocks is not None
            n_sub = (n + sub - 1) // sub
            L.blocks("fx_hist", n_sub, 256, 4 * S, block)
            L.launch("fx_offsets", nch, block)
            mark("group offsets")
            coff[1:] = xp.cumsum(coff[1:])
            L.blocks("fx_scatter", n_sub, 256, 4 * S, block)
        if name == "fx_compact":  # each symbol's first entry in the trade list
            mark("list offsets")
            symi = tmp["SYMI"]
            tmp["SBASE"][1:] = xp.cumsum(symi[_SY.index("NFIN")] - symi[_SY.index("N0")])
        L.launch(name, threads[per], block)
    return out, rej


class PinnedStager:
    """Reusable pinned host buffers and a CUDA stream for host <-> device batch transfers.

    :meth:`upload` packs the ten tick columns of a host batch into one pinned buffer
    (each column 256-byte aligned) and issues a single asynchronous host-to-device copy on
    :attr:`stream`; :meth:`download` copies a device (K, n) float64 matrix back through a
    second pinned buffer and synchronises the stream. Buffers grow (x1.5) as needed and
    are reused across batches; this object is not thread-safe.
    """

    ALIGN = 256

    def __init__(self) -> None:
        import cupy as cp

        self.stream = cp.cuda.Stream(non_blocking=True)
        self._in: tuple[Any, np.ndarray] | None = None
        self._out: tuple[Any, np.ndarray] | None = None

    @staticmethod
    def _pinned(current: tuple[Any, np.ndarray] | None, nbytes: int) -> tuple[Any, np.ndarray]:
        import cupy as cp

        if current is not None and current[1].nbytes >= nbytes:
            return current
        size = max(nbytes, int(1.5 * (current[1].nbytes if current else 0)), 1 << 20)
        mem = cp.cuda.alloc_pinned_memory(size)
        return mem, np.frombuffer(mem, dtype=np.uint8, count=size)

    def upload(self, host: Any) -> Any:
        """Stage a host :class:`TickColumns` and return its device twin (views of one buffer).

        Must be called inside ``with self.stream``; the copy is asynchronous on that stream.
        """
        import cupy as cp

        from mystocks_gpu.gpu_ops.tick_columns import TickColumns

        cols = host.columns()
        offsets: dict[str, int] = {}
        pos = 0
        for name, a in cols.items():
            offsets[name] = pos
            pos += -(-a.nbytes // self.ALIGN) * self.ALIGN
        self._in = self._pinned(self._in, pos)
        buf = self._in[1]
        for name, a in cols.items():
            o = offsets[name]
            buf[o : o + a.nbytes] = a.view(np.uint8)
        dev = cp.empty(pos, dtype=cp.uint8)
        dev.set(buf[:pos], stream=self.stream)
        return TickColumns(
            **{
                name: dev[offsets[name] : offsets[name] + a.nbytes].view(a.dtype)
                for name, a in cols.items()
            }
        )

    def download(self, mat: Any) -> np.ndarray:
        """Copy a device float64 (K, n) matrix to a new host array via pinned memory."""
        self._out = self._pinned(self._out, mat.nbytes)
        view = self._out[1][: mat.nbytes].view(np.float64).reshape(mat.shape)
        if mat.size:
            mat.get(stream=self.stream, out=view)
        self.stream.synchronize()
        return view.copy()
