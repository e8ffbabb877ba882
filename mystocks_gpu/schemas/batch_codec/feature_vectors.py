"""Batch decoder of ``mystocks.features.FeatureVector`` records (``features.ticks``): the columns
``symbol``, ``ts_event``, ``seq``, ``ts_ingest`` and the ``values`` map projected onto a chosen list
of keys, as a float64 matrix.

The generic :class:`~mystocks_gpu.schemas.batch_codec.BatchDecoder` handles records of primitive
fields only; a feature vector's ``values`` is an Avro ``map<string, double>`` whose keys are a
configuration of the producer. This decoder walks the map blocks of every record in one compiled
(numba) loop and matches each key against the wanted ones (bytewise), so the cost per record is
O(entries x wanted keys) byte compares and no Python object per record. Semantics equal
``fastavro`` (``tests/unit/training/test_feature_vector_decoder.py``): keys in any order,
negative block counts (with a byte size), duplicate keys (the last wins), keys that are not
wanted are skipped, a wanted key absent from a record is NaN in that row.

``FeatureVectorDecoder(keys, store=None, symbols=None).decode(values) -> FeatureBatch``:

* ``columns``: ``sym`` int32 codes of ``symbols`` (a :class:`SymbolTable`), ``ts`` / ``seq`` /
  ``ts_ingest`` int64, for the good rows only;
* ``X``: float64 ``(n_ok, len(keys))``; ``present``: bool ``(len(keys),)``, whether each key
  appeared in at least one good record;
* ``status`` int8 ``(n_in,)`` (:class:`Status` codes: 0 ok, bad magic, unknown / wrong schema id,
  truncated, invalid UTF-8, trailing bytes, tombstone...), ``index`` int64 ``(n_ok,)``: the input
  row of each good row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np

from mystocks_gpu.schemas.batch_codec.decoder import gather_values, resolve_schema
from mystocks_gpu.schemas.batch_codec.primitives import _read_long
from mystocks_gpu.schemas.batch_codec.status import Status
from mystocks_gpu.schemas.codec import MAGIC, PREFIX_LEN
from mystocks_gpu.schemas.exceptions import SchemaError
from mystocks_gpu.schemas.schema_store import SchemaStore
from mystocks_gpu.schemas.symbols import SymbolTable, utf8_ok
from mystocks_gpu.schemas.validate import MAX_SYMBOL_BYTES

SCHEMA = "mystocks.features.FeatureVector"
#: the field layout this decoder is written for (checked against the schema at construction)
LAYOUT = (("symbol", "string"), ("ts_event", "long"), ("seq", "long"), ("ts_ingest", "long"),
          ("values", "map<double>"))
_NAN_BITS = np.uint64(0x7FF8000000000000)
_S_BAD_MAGIC = int(Status.BAD_MAGIC)
_S_UNKNOWN = int(Status.UNKNOWN_SCHEMA_ID)
_S_WRONG = int(Status.WRONG_SCHEMA)
_S_TRUNC = int(Status.TRUNCATED)
_S_NEG = int(Status.NEGATIVE_LENGTH)
_S_UTF8 = int(Status.INVALID_UTF8)
_S_TRAIL = int(Status.TRAILING_BYTES)
_S_NULL = int(Status.NULL_VALUE)
_S_LONG_SYMBOL = int(Status.SYMBOL_TOO_LONG)


@numba.njit(cache=True, inline="always")
def _key_eq(kbuf, koff, j, buf, kp, kl):  # pragma: no cover - numba
    """Whether wanted key ``j`` equals ``buf[kp:kp+kl]``."""
    if koff[j + 1] - koff[j] != kl:
        return False
    o = koff[j]
    for t in range(kl):
        if kbuf[o + t] != buf[kp + t]:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _decode_fv(buf, starts, ends, expect_id, known_ids, kbuf, koff, max_sym,  # pragma: no cover - numba
               status, sym_off, sym_len, ts, seq, ts_ingest, xu, present):
    n_keys = koff.size - 1
    seen = np.zeros(n_keys, np.bool_)
    # per map entry position: where that entry's key was last seen (bytes in buf) and what it matched
    prev_off = np.zeros(256, np.int64)
    prev_len = np.full(256, -1, np.int64)
    prev_res = np.full(256, -1, np.int64)
    k = 0
    for i in range(starts.size):
        p = starts[i]
        end = ends[i]
        if end - p < 1:
            status[i] = _S_TRUNC
            continue
        if buf[p] != MAGIC:
            status[i] = _S_BAD_MAGIC
            continue
        if end - p < PREFIX_LEN:
            status[i] = _S_TRUNC
            continue
        sid = (np.int64(buf[p + 1]) << 24) | (np.int64(buf[p + 2]) << 16) | (np.int64(buf[p + 3]) << 8) \
            | np.int64(buf[p + 4])
        if sid != expect_id:
            code = _S_UNKNOWN
            for t in range(known_ids.size):
                if known_ids[t] == sid:
                    code = _S_WRONG
            status[i] = code
            continue
        p += PREFIX_LEN
        v, p, err = _read_long(buf, p, end)
        if err != 0:
            status[i] = err
            continue
        if v < 0:
            status[i] = _S_NEG
            continue
        if v > end - p:
            status[i] = _S_TRUNC
            continue
        if not utf8_ok(buf, p, v):
            status[i] = _S_UTF8
            continue
        if v > max_sym:
            status[i] = _S_LONG_SYMBOL
            continue
        so = p
        sl = v
        p += v
        t_ev, p, err = _read_long(buf, p, end)
        if err != 0:
            status[i] = err
            continue
        sq, p, err = _read_long(buf, p, end)
        if err != 0:
            status[i] = err
            continue
        t_in, p, err = _read_long(buf, p, end)
        if err != 0:
            status[i] = err
            continue
        for j in range(n_keys):
            xu[k, j] = _NAN_BITS
            seen[j] = False
        bad = 0
        ent = 0
        while bad == 0:
            cnt, p, err = _read_long(buf, p, end)
            if err != 0:
                bad = err
                break
            if cnt == 0:
                break
            if cnt < 0:  # a block with its byte size (Avro spec): the items follow as usual
                cnt = -cnt
                _size, p, err = _read_long(buf, p, end)
                if err != 0:
                    bad = err
                    break
            for _e in range(cnt):
                kl, p, err = _read_long(buf, p, end)
                if err != 0:
                    bad = err
                    break
                if kl < 0:
                    bad = _S_NEG
                    break
                if kl > end - p:
                    bad = _S_TRUNC
                    break
                kp = p
                p += kl
                if end - p < 8:
                    bad = _S_TRUNC
                    break
                # the same key bytes as at this entry of the previous good-so-far record (the usual
                # case: one producer writes its keys in one order): reuse that match, else scan
                jm = -1
                known = False
                if ent < prev_len.size and prev_len[ent] == kl:
                    known = True
                    o = prev_off[ent]
                    for t in range(kl):
                        if buf[o + t] != buf[kp + t]:
                            known = False
                            break
                if known:
                    jm = prev_res[ent]
                else:
                    for j in range(n_keys):
                        if _key_eq(kbuf, koff, j, buf, kp, kl):
                            jm = j
                            break
                    if jm < 0 and not utf8_ok(buf, kp, kl):  # a wanted key matched bytewise is valid UTF-8
                        bad = _S_UTF8
                        break
                    if ent < prev_len.size:
                        prev_off[ent], prev_len[ent], prev_res[ent] = kp, kl, jm
                ent += 1
                if jm >= 0:
                    u = np.uint64(0)
                    for t in range(8):
                        u |= np.uint64(buf[p + t]) << np.uint64(8 * t)
                    xu[k, jm] = u
                    seen[jm] = True
                p += 8
        if bad != 0:
            status[i] = bad
            continue
        if p != end:
            status[i] = _S_TRAIL
            continue
        sym_off[k] = so
        sym_len[k] = sl
        ts[k] = t_ev
        seq[k] = sq
        ts_ingest[k] = t_in
        for j in range(n_keys):
            if seen[j]:
                present[j] = True
        status[i] = 0
        k += 1
    return k


@dataclass
class FeatureBatch:
    """Decoded feature vectors (see the module docstring for the fields)."""

    columns: dict[str, np.ndarray]
    X: np.ndarray
    present: np.ndarray
    status: np.ndarray
    index: np.ndarray
    keys: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.index.size)


def _check_layout(parsed: dict) -> None:  # type: ignore[type-arg]
    got = []
    for f in parsed.get("fields", []):
        t = f["type"]
        if isinstance(t, dict) and t.get("type") == "map":
            got.append((f["name"], f"map<{t['values']}>"))
        else:
            got.append((f["name"], t if isinstance(t, str) else str(t)))
    if tuple(got) != LAYOUT:
        raise SchemaError(f"{SCHEMA} has fields {got}; this decoder is written for {list(LAYOUT)}")


class FeatureVectorDecoder:
    """Decode framed ``FeatureVector`` values, projecting ``values`` onto ``keys``."""

    def __init__(self, keys: Sequence[str], store: SchemaStore | None = None, *,
                 symbols: SymbolTable | None = None, max_symbol_bytes: int = MAX_SYMBOL_BYTES) -> None:
        self.keys = tuple(keys)
        if len(set(self.keys)) != len(self.keys):
            raise SchemaError(f"duplicate feature keys in {list(self.keys)}")
        parsed, self.schema_id, self.known_ids = resolve_schema(SCHEMA, store, None)
        _check_layout(dict(parsed))
        encoded = [k.encode() for k in self.keys]
        self._kbuf = np.frombuffer(b"".join(encoded) or b"\0", np.uint8)
        self._koff = np.zeros(len(encoded) + 1, np.int64)
        self._koff[1:] = np.cumsum([len(e) for e in encoded])
        self.symbols = symbols if symbols is not None else SymbolTable()
        self.max_symbol_bytes = int(max_symbol_bytes)

    def decode(self, values: Sequence[bytes | bytearray | memoryview | None]) -> FeatureBatch:
        """Decode ``values``; bad records are flagged in ``status``, never raised."""
        buf, starts, ends, nulls = gather_values(values)
        n, n_keys = starts.size, len(self.keys)
        status = np.empty(n, np.int8)
        sym_off, sym_len = np.empty(n, np.int64), np.empty(n, np.int64)
        ts, seq, ts_ingest = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
        X = np.empty((n, n_keys), np.float64)
        present = np.zeros(n_keys, np.bool_)
        k = int(_decode_fv(buf, starts, ends, self.schema_id, self.known_ids, self._kbuf, self._koff,
                           self.max_symbol_bytes, status, sym_off, sym_len, ts, seq, ts_ingest,
                           X.view(np.uint64), present))
        if nulls is not None:
            status[nulls] = _S_NULL
        index = np.flatnonzero(status == 0) if k < n else np.arange(n, dtype=np.int64)
        sym = self.symbols.intern_slices(buf, sym_off[:k], sym_len[:k], check_utf8=False)
        cols = {"sym": sym, "ts": ts[:k], "seq": seq[:k], "ts_ingest": ts_ingest[:k]}
        return FeatureBatch(cols, X[:k], present, status, index.astype(np.int64, copy=False), self.keys)


__all__ = ["FeatureBatch", "FeatureVectorDecoder", "SCHEMA"]
