"""Symbols as dense int32 codes: a stable, growing string <-> code table.

:class:`SymbolTable` hands out codes 0, 1, 2, ... in order of first sight and never changes or
reuses one. It keeps the UTF-8 bytes of every symbol in one arena and an open-addressing hash table
(FNV-1a 64-bit hash, linear probing) in NumPy arrays, so a numba loop maps a batch of byte slices
``(offset, length)`` of a decode buffer to codes without creating a Python ``str`` per record; only a
symbol seen for the first time is decoded into Python. A probe compares the full hash, the length
and then every byte, so two different symbols never share a code, whatever their hashes.

Layout (all NumPy, grown by doubling):

- ``arena``: uint8 ``(capacity,)``, the bytes of symbol ``c`` are ``arena[off[c]:off[c] + len[c]]``;
- ``off`` int64, ``len`` int32, ``hash`` uint64: ``(capacity,)`` per code;
- ``slots`` int32 ``(power of two,)``: a code, or -1 for an empty slot; load factor <= 1/2.

:meth:`SymbolTable.to_bytes` / :meth:`SymbolTable.from_bytes` serialise the table (for state
changelogs): ``b"MSYM"``, version byte 1, uint32 LE count, ``count`` uint32 LE byte lengths, then the
concatenated UTF-8 bytes. Restoring gives the same codes.

Also here, shared with the batch codec: :func:`utf8_ok` (strict UTF-8 check of a byte slice, in
numba) and :func:`symbol_arrays` (the UTF-8 arena of a symbol list).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

import numba
import numpy as np

_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)
_MAGIC = b"MSYM\x01"


@numba.njit(cache=True, inline="always")
def fnv1a(buf: np.ndarray, off: int, n: int) -> np.uint64:
    """FNV-1a 64-bit hash of ``buf[off:off + n]`` (uint8)."""
    h = _FNV_OFFSET
    for k in range(off, off + n):
        h ^= np.uint64(buf[k])
        h *= _FNV_PRIME
    return h


# strict UTF-8 (as ``bytes.decode``): per lead byte, the number of continuation bytes (-1: invalid)
# and the allowed range of the first one (excludes overlongs, surrogates and > U+10FFFF)
_U8N = np.full(256, -1, np.int64)
_U8N[:0x80], _U8N[0xC2:0xE0], _U8N[0xE0:0xF0], _U8N[0xF0:0xF5] = 0, 1, 2, 3
_U8LO, _U8HI = np.full(256, 0x80, np.int64), np.full(256, 0xBF, np.int64)
_U8LO[0xE0], _U8HI[0xED], _U8LO[0xF0], _U8HI[0xF4] = 0xA0, 0x9F, 0x90, 0x8F


@numba.njit(cache=True, inline="always")
def utf8_ok(buf, p, n):  # pragma: no cover - numba
    """Whether ``buf[p:p+n]`` is strict UTF-8 (``0 <= p``: indexed unsigned, see ``_read_long``)."""
    end = p + n
    while p < end:
        b = buf[np.uint64(p)]
        if b < 0x80:
            p += 1
            continue
        k = _U8N[b]
        b1 = buf[np.uint64(p + 1)] if p + 1 < end else np.uint8(0)
        if k < 0 or p + k >= end or b1 < _U8LO[b] or b1 > _U8HI[b]:
            return False
        for t in range(2, k + 1):
            bt = buf[np.uint64(p + t)]
            if bt < 0x80 or bt > 0xBF:
                return False
        p += k + 1
    return True


@numba.njit(cache=True)
def _first_bad_utf8(buf, off, ln):  # pragma: no cover - numba
    for i in range(off.size):
        if not utf8_ok(buf, off[i], ln[i]):
            return i
    return -1


@numba.njit(cache=True, inline="always")
def _same_bytes(a, ao, b, bo, n):  # pragma: no cover - numba
    """Whether ``a[ao:ao+n] == b[bo:bo+n]``."""
    for t in range(n):
        if a[ao + t] != b[bo + t]:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _intern(buf, boff, blen, out, start, arena, arena_len, s_off, s_len, s_hash, slots, n, hmask):  # pragma: no cover
    """Codes for slices ``start..`` of ``buf``; stops (returning the row) when the table must grow.

    Returns ``(next_row, n_symbols, arena_len)``; ``next_row == boff.size`` when done.
    """
    mask = np.uint64(slots.size - 1)
    for i in range(start, boff.size):
        o = boff[i]
        ln = blen[i]
        if i > start and ln == blen[i - 1] and _same_bytes(buf, boff[i - 1], buf, o, ln):
            out[i] = out[i - 1]  # a run of one symbol (a replayed partition): no hashing
            continue
        h = fnv1a(buf, o, ln) & hmask
        j = np.int64(h & mask)
        c = slots[j]
        while c >= 0:
            if s_hash[c] == h and s_len[c] == ln and _same_bytes(arena, s_off[c], buf, o, ln):
                break
            j = (j + 1) & np.int64(mask)
            c = slots[j]
        if c >= 0:
            out[i] = c
            continue
        if n >= s_off.size or arena_len + ln > arena.size or 2 * (n + 1) > slots.size:
            return i, n, arena_len
        for t in range(ln):
            arena[arena_len + t] = buf[o + t]
        s_off[n] = arena_len
        s_len[n] = ln
        s_hash[n] = h
        slots[j] = n
        out[i] = n
        n += 1
        arena_len += ln
    return boff.size, n, arena_len


@numba.njit(cache=True)
def _rehash(s_hash, n, slots):  # pragma: no cover
    """Fill empty ``slots`` (all -1, power-of-two size) with codes ``0..n-1`` by their hashes."""
    mask = np.uint64(slots.size - 1)
    for c in range(n):
        j = np.int64(s_hash[c] & mask)
        while slots[j] >= 0:
            j = (j + 1) & np.int64(mask)
        slots[j] = c


class SymbolTable:
    """Stable string <-> dense int32 code table that grows on first sight.

    ``codes = table.intern_slices(buf, off, length)`` maps byte slices of a uint8 buffer (int64
    offsets, integer lengths, shape ``(n,)``) to an int32 ``(n,)`` array of codes in one numba pass.
    """

    def __init__(self, symbols: Iterable[str] = (), *, hash_mask: int = 2**64 - 1) -> None:
        #: bits of the hash kept; tests narrow it to force full-hash collisions (codes stay exact)
        self._hmask = np.uint64(hash_mask)
        self._arena = np.empty(1024, np.uint8)
        self._arena_len = 0
        self._off = np.empty(64, np.int64)
        self._len = np.empty(64, np.int32)
        self._hash = np.empty(64, np.uint64)
        self._slots = np.full(128, -1, np.int32)
        self._strings: list[str] = []
        self._index: dict[str, int] = {}
        syms = list(symbols)
        if syms:
            self.codes(syms)

    # ---- Python-side API ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._strings)

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SymbolTable) and self._strings == other._strings

    def __repr__(self) -> str:
        return f"SymbolTable({len(self)} symbols)"

    @property
    def symbols(self) -> Sequence[str]:
        """All symbols, index = code (a read-only view; do not mutate)."""
        return tuple(self._strings)

    def symbol(self, code: int) -> str:
        """The symbol with ``code``; IndexError if there is none."""
        if code < 0:
            raise IndexError(code)
        return self._strings[code]

    def get(self, symbol: str) -> int | None:
        """The code of ``symbol`` if known, else ``None`` (never inserts)."""
        return self._index.get(symbol)

    def code(self, symbol: str) -> int:
        """The code of ``symbol``, inserting it on first sight."""
        c = self._index.get(symbol)
        if c is None:
            c = int(self.codes([symbol])[0])
        return c

    def codes(self, symbols: Sequence[str]) -> np.ndarray:
        """int32 ``(len(symbols),)`` codes, inserting unseen symbols in order."""
        return self.intern_slices(*symbol_arrays(symbols), check_utf8=False)

    def decode(self, codes: np.ndarray) -> list[str]:
        """Symbols for an array of codes (Python strings; for tests and slow paths)."""
        s = self._strings
        return [s[c] for c in np.asarray(codes).tolist()]

    # ---- batch interning ---------------------------------------------------------------------
    def intern_slices(self, buf: np.ndarray, off: np.ndarray, length: np.ndarray,
                      check_utf8: bool = True) -> np.ndarray:
        """int32 codes for the UTF-8 slices ``buf[off[i]:off[i] + length[i]]``, shape ``(n,)``.

        ValueError (table unchanged) if a slice is not UTF-8; ``check_utf8=False`` skips the check
        for callers that already made it (the batch decoder)."""
        off = np.ascontiguousarray(off, np.int64)
        length = np.ascontiguousarray(length, np.int64)
        out = np.empty(off.size, np.int32)
        if off.size == 0:
            return out
        buf = np.ascontiguousarray(buf, np.uint8)
        if check_utf8 and (bad := _first_bad_utf8(buf, off, length)) >= 0:
            raise ValueError(f"slice {bad} is not valid UTF-8")
        n0 = n = len(self._strings)
        row = 0
        while True:
            row, n, self._arena_len = _intern(buf, off, length, out, row, self._arena, self._arena_len,
                                              self._off, self._len, self._hash, self._slots, n,
                                              self._hmask)
            if row >= off.size:
                break
            self._grow(n, int(length[row]))
        if n > n0:
            self._sync(n0, n)
        return out

    def _grow(self, n: int, need_bytes: int) -> None:
        if n >= self._off.size:
            cap = 2 * self._off.size
            for name in ("_off", "_len", "_hash"):
                old = getattr(self, name)
                new = np.empty(cap, old.dtype)
                new[:n] = old[:n]
                setattr(self, name, new)
        if self._arena_len + need_bytes > self._arena.size:
            new_a = np.empty(max(2 * self._arena.size, self._arena_len + need_bytes), np.uint8)
            new_a[: self._arena_len] = self._arena[: self._arena_len]
            self._arena = new_a
        if 2 * (n + 1) > self._slots.size:
            self._slots = np.full(2 * self._slots.size, -1, np.int32)
            _rehash(self._hash, n, self._slots)

    def _sync(self, n0: int, n: int) -> None:
        arena = self._arena
        for c in range(n0, n):
            o = int(self._off[c])
            s = arena[o: o + int(self._len[c])].tobytes().decode("utf-8")
            self._index[s] = c
            self._strings.append(s)
        if len(self._index) != n:  # cannot happen unless a slice bypassed the byte comparison
            raise AssertionError("SymbolTable: two codes for one symbol")

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(arena uint8, off int64 (n,), len int32 (n,))``: the UTF-8 bytes of every code."""
        n = len(self._strings)
        return self._arena[: self._arena_len], self._off[:n], self._len[:n]

    # ---- serialisation -------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Serialised table (see module docstring); :meth:`from_bytes` restores the same codes."""
        arena, off, ln = self.arrays()
        n = len(self._strings)
        return b"".join((_MAGIC, struct.pack("<I", n), ln.astype("<u4").tobytes(), arena.tobytes()))

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> SymbolTable:
        """Restore a table written by :meth:`to_bytes`; ValueError on malformed input."""
        data = bytes(data)
        if data[:5] != _MAGIC or len(data) < 9:
            raise ValueError("not a serialised SymbolTable (bad magic/version)")
        (n,) = struct.unpack_from("<I", data, 5)
        end_lens = 9 + 4 * n
        if len(data) < end_lens:
            raise ValueError("truncated SymbolTable")
        lens = np.frombuffer(data, "<u4", n, 9).astype(np.int64)
        if end_lens + int(lens.sum()) != len(data):
            raise ValueError("SymbolTable byte count does not match its lengths")
        bounds = np.concatenate(([0], np.cumsum(lens))) + end_lens
        strs = [data[a:b].decode("utf-8") for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)]
        if len(set(strs)) != n:
            raise ValueError("SymbolTable has duplicate symbols")
        return cls(strs)


def symbol_arrays(symbols: SymbolTable | Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(arena uint8, off int64 (n,), len int64 (n,))``: the UTF-8 bytes of each symbol by code."""
    if isinstance(symbols, SymbolTable):
        arena, off, ln = symbols.arrays()
        return arena, off, ln.astype(np.int64)
    enc = [s.encode("utf-8") for s in symbols]
    ln = np.fromiter(map(len, enc), np.int64, len(enc))
    off = np.zeros(len(enc), np.int64)
    if len(enc) > 1:
        np.cumsum(ln[:-1], out=off[1:])
    return np.frombuffer(b"".join(enc) or b"\0", np.uint8), off, ln


__all__ = ["SymbolTable", "fnv1a", "symbol_arrays", "utf8_ok"]
