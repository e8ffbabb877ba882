"""The risk processor's partition state (:class:`RiskBook`): every account's
:class:`~mystocks_gpu.gpu_ops.risk.AccountState` stacked on the active backend, the latest price of
every symbol, positions updates waiting for their event time, and how far the positions topic has
been read; plus its changelog encoding.

Changelog entries (keys, latest value per key wins on restore)::

    b"book"        JSON: positions read position per partition, pending updates (their raw Avro
                   values, re-decoded on restore), price watermark, current emit window, and the
                   last price / price time per symbol (by name)
    b"a/<account>" the account's full state: u32 n + n symbol names ("\\n"-joined UTF-8) +
                   ``AccountState.to_bytes()`` (format in ``gpu_ops/risk/account_state.py``);
                   b"" = account closed
    b"p/<account>" the account's last prices only: K little-endian float64 (written every commit
                   in which only prices moved; always written with its ``a/`` entry)

Only what changed since the last commit is written: the EWMA covariance and return window of an
account (``8 (K^2 + W K)`` bytes) change at return-interval closes, day rolls, limit flag changes
and position updates; between them a commit writes ``8 K`` bytes per account. One account entry
must fit the changelog's ``max.message.bytes`` (1 MiB by default: K up to about 200 symbols with
the default window of 250).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.backend import to_host
from mystocks_gpu.gpu_ops.risk import AccountState, StateBatch
from mystocks_gpu.processors.risk.config import RiskProcessorConfig
from mystocks_gpu.processors.risk.positions import PositionUpdate
from mystocks_gpu.schemas.symbols import SymbolTable

BOOK_KEY = b"book"
_U32 = struct.Struct("<I")


@dataclass
class RiskBook:
    """One partition's risk state (see the module docstring). ``names`` are the accounts in
    stack order (sorted); ``px_last``/``px_ts`` are indexed by symbol code (host arrays);
    ``dirty_*`` record what the next changelog must carry."""

    names: list[str] = field(default_factory=list)
    stack: StateBatch | None = None
    px_last: np.ndarray = field(default_factory=lambda: np.zeros(0))
    px_ts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pending: list[PositionUpdate] = field(default_factory=list)
    side_next: dict[int, int] = field(default_factory=dict)
    watermark: int = -1
    window: int = -1
    dirty_full: set[str] = field(default_factory=set)
    dirty_px: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)
    dirty_book: bool = False

    def copy(self) -> RiskBook:
        """A copy that shares the (never written in place) stacked arrays."""
        return RiskBook(list(self.names), None if self.stack is None else StateBatch(dict(self.stack.arrays)),
                        self.px_last.copy(), self.px_ts.copy(), list(self.pending), dict(self.side_next),
                        self.watermark, self.window, set(self.dirty_full), set(self.dirty_px),
                        set(self.removed), self.dirty_book)

    def grow_prices(self, n_codes: int) -> None:
        """Make the per-symbol price arrays cover codes ``0 .. n_codes - 1``."""
        n = self.px_last.shape[0]
        if n_codes > n:
            self.px_last = np.concatenate([self.px_last, np.full(n_codes - n, np.nan)])
            self.px_ts = np.concatenate([self.px_ts, np.full(n_codes - n, -1, np.int64)])


def account_at(stack: StateBatch, i: int) -> AccountState:
    """Account ``i`` of a stack as a host :class:`AccountState` (padding dropped)."""
    h = {k: np.asarray(to_host(v[i : i + 1]))[0] for k, v in stack.arrays.items()}
    k = int(np.sum(h["symbols"] >= 0))
    kw: dict[str, Any] = {f: h[f][:k].copy() for f in ("symbols", "sector", "qty", "cost", "last_px",
                                                        "prev_close", "day_ref", "mean", "n_obs")}
    kw["cov"] = h["cov"][:k, :k].copy()
    kw["window"] = h["window"][:, :k].copy()
    kw["limits"] = h["limits"].copy()
    kw["breached"] = h["breached"].copy()
    for f in ("win_pos", "win_count", "interval", "day"):
        kw[f] = int(h[f])
    for f in ("peak", "max_dd", "capital"):
        kw[f] = float(h[f])
    return AccountState(**kw)


def sector_codes(symbols: list[str], cfg: RiskProcessorConfig) -> np.ndarray:
    """Sector code of each symbol (-1 = not in the sector map)."""
    names = cfg.sector_names
    index = {s: i for i, s in enumerate(names)}
    return np.array([index.get(cfg.sectors.get(s, ""), -1) for s in symbols], dtype=np.int32)


def apply_updates(book: RiskBook, updates: list[PositionUpdate], cfg: RiskProcessorConfig,
                  symbols: SymbolTable, xp: ModuleType) -> None:
    """Apply positions updates (in the given order) to ``book`` in place: new accounts, new
    holdings (history of retained symbols kept), closed accounts; newly held symbols start at
    the symbol's latest price. Restacks the accounts (sorted by name)."""
    if not updates:
        return
    states = {n: account_at(book.stack, i) for i, n in enumerate(book.names)} if book.stack is not None else {}
    W = cfg.risk.window
    for u in updates:
        if u.symbols is None:
            if states.pop(u.account, None) is not None:
                book.removed.add(u.account)
            book.dirty_full.discard(u.account)
            book.dirty_px.discard(u.account)
            continue
        codes = np.array([symbols.code(s) for s in u.symbols], dtype=np.int32)
        sect = sector_codes(list(u.symbols), cfg)
        lim = [d if math.isnan(v) else v for v, d in zip(u.limits, cfg.default_limits, strict=True)]
        fin = np.where(np.isfinite(u.cost), u.cost, 0.0)
        cap = float(np.sum(np.abs(u.qty * fin))) if u.capital is None else float(u.capital)
        old = states.get(u.account)
        st = (old.with_positions(codes, u.qty, u.cost, sect, lim, cap) if old is not None
              else AccountState.new(codes, u.qty, u.cost, W, sect, lim, cap))
        book.grow_prices(len(symbols))
        seed = np.isnan(st.last_px) & np.isfinite(book.px_last[codes]) if len(codes) else np.zeros(0, bool)
        st.last_px[seed] = book.px_last[codes[seed]]
        st.day_ref[seed & np.isnan(st.day_ref)] = book.px_last[codes[seed & np.isnan(st.day_ref)]]
        states[u.account] = st
        book.removed.discard(u.account)
        book.dirty_full.add(u.account)
    book.names = sorted(states)
    book.stack = StateBatch.stack([states[n] for n in book.names], xp) if book.names else None


# ---- changelog ---------------------------------------------------------------------------------
def account_entry(st: AccountState, symbols: SymbolTable) -> bytes:
    names = "\n".join(symbols.symbol(int(c)) for c in st.symbols.tolist()).encode()
    return _U32.pack(len(names)) + names + st.to_bytes()


def parse_account_entry(blob: bytes, symbols: SymbolTable, cfg: RiskProcessorConfig) -> AccountState:
    (n,) = _U32.unpack_from(blob, 0)
    names = blob[4:4 + n].decode().split("\n") if n else []
    st = AccountState.from_bytes(blob[4 + n:])
    st.symbols = np.array([symbols.code(s) for s in names], dtype=np.int32)
    st.sector = sector_codes(names, cfg)
    return st


def book_entry(book: RiskBook, symbols: SymbolTable) -> bytes:
    known = np.flatnonzero(book.px_ts >= 0)
    doc = {"side_next": {str(p): o for p, o in sorted(book.side_next.items())},
           "watermark": book.watermark, "window": book.window,
           "pending": [{"p": u.partition, "o": u.offset, "k": u.account, "t": u.ts_event,
                        "v": None if u.raw is None else u.raw.hex()} for u in book.pending],
           "prices": {symbols.symbol(int(c)): [float(book.px_last[c]).hex(), int(book.px_ts[c])] for c in known}}
    return json.dumps(doc, separators=(",", ":")).encode()


def changelog_entries(book: RiskBook, symbols: SymbolTable) -> list[tuple[bytes, bytes]]:
    """The entries for what changed since the last commit, and reset the dirty marks."""
    out: list[tuple[bytes, bytes]] = [(BOOK_KEY, book_entry(book, symbols))]
    pos = {n: i for i, n in enumerate(book.names)}
    if book.stack is not None and (book.dirty_px or book.dirty_full):
        last = to_host(book.stack.last_px)
        ksyms = to_host(book.stack.symbols)
        for n in sorted(book.dirty_full | book.dirty_px):
            i = pos[n]
            if n in book.dirty_full:
                out.append((b"a/" + n.encode(), account_entry(account_at(book.stack, i), symbols)))
            k = int(np.sum(ksyms[i] >= 0))
            out.append((b"p/" + n.encode(), last[i, :k].astype("<f8").tobytes()))
    for n in sorted(book.removed):
        out += [(b"a/" + n.encode(), b""), (b"p/" + n.encode(), b"")]
    book.dirty_full.clear()
    book.dirty_px.clear()
    book.removed.clear()
    book.dirty_book = False
    return out


def restore_book(entries: Iterable[tuple[bytes, bytes]], symbols: SymbolTable, cfg: RiskProcessorConfig,
                 xp: ModuleType, decode_pending: Any) -> RiskBook:
    """A book from the latest changelog entry of every key (see the module docstring);
    ``decode_pending(list of (partition, offset, key, value, ts_ms))`` re-decodes pending updates."""
    book = RiskBook()
    accounts: dict[str, AccountState] = {}
    prices: dict[str, bytes] = {}
    for key, value in entries:
        if key == BOOK_KEY:
            doc = json.loads(value)
            book.side_next = {int(p): int(o) for p, o in doc["side_next"].items()}
            book.watermark, book.window = int(doc["watermark"]), int(doc["window"])
            book.pending = decode_pending([(d["p"], d["o"], d["k"].encode(),
                                            None if d["v"] is None else bytes.fromhex(d["v"]),
                                            d["t"] // 1_000_000) for d in doc["pending"]])
            for sym, (px, ts) in doc["prices"].items():
                c = symbols.code(sym)
                book.grow_prices(c + 1)
                book.px_last[c], book.px_ts[c] = float.fromhex(px), int(ts)
        elif key.startswith(b"a/") and value:
            accounts[key[2:].decode()] = parse_account_entry(value, symbols, cfg)
        elif key.startswith(b"p/") and value:
            prices[key[2:].decode()] = value
    for name, blob in prices.items():
        st = accounts.get(name)
        px = np.frombuffer(blob, "<f8").astype(np.float64)
        if st is not None and px.shape == st.last_px.shape:
            st.last_px = px.copy()
    book.grow_prices(len(symbols))
    book.names = sorted(accounts)
    book.stack = StateBatch.stack([accounts[n] for n in book.names], xp) if book.names else None
    return book
