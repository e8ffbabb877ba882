"""Batch codec vs fastavro per record: decode and encode the same Tick values, one run.

Usage: ``python bench/codec.py [--n 1000000] [--symbols 500] [--json out.json]``.

Ours: ``BatchEncoder("Tick").encode(columns, names)`` (columns from the synthetic generator -> list of
framed bytes) and ``TickDecoder().decode(values)`` (list of bytes -> columns + int32 symbol codes).
fastavro: a ``schemaless_writer`` / ``schemaless_reader`` loop over the same records / values (with the
5-byte Confluent prefix written / skipped). numba compile time is paid before timing (reported).
Prints records/s and ratios; ``--json`` writes ``ours_decode_rps``, ``fastavro_decode_rps``,
``decode_ratio``, ``ours_encode_rps``, ``fastavro_encode_rps``, ``encode_ratio`` (+ context).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import fastavro
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mystocks_gpu.data.synthetic_ticks import SyntheticMarket, generate, symbol_names, to_records  # noqa: E402
from mystocks_gpu.schemas.batch_codec import BatchEncoder, TickDecoder  # noqa: E402
from mystocks_gpu.schemas.codec import PREFIX_LEN, frame  # noqa: E402
from mystocks_gpu.schemas.schema_store import default_store  # noqa: E402

CHUNK = 100_000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Tick batch codec (numba) vs fastavro per-record loop.")
    ap.add_argument("--n", type=int, default=1_000_000, help="records (default 1_000_000)")
    ap.add_argument("--symbols", type=int, default=500, help="distinct symbols (default 500)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    n = args.n

    market = SyntheticMarket(n_symbols=args.symbols)
    cols = generate(market, n)
    names = symbol_names(args.symbols, market.seed)
    info = default_store().by_name("Tick")
    parsed, prefix = info.parsed, frame(info.id, b"")

    t0 = time.perf_counter()
    enc, dec = BatchEncoder("Tick"), TickDecoder()
    warm = enc.encode({k: v[:10] for k, v in cols.items()}, names)
    dec.decode(warm)
    compile_s = time.perf_counter() - t0

    # ---- encode -------------------------------------------------------------------------------
    t0 = time.perf_counter()
    values = enc.encode(cols, names)
    ours_enc = time.perf_counter() - t0

    fa_enc = 0.0
    fa_values: list[bytes] = []
    for s in range(0, n, CHUNK):
        recs = list(to_records({k: v[s:s + CHUNK] for k, v in cols.items()}, names))
        t0 = time.perf_counter()
        for r in recs:
            bio = io.BytesIO()
            bio.write(prefix)
            fastavro.schemaless_writer(bio, parsed, r)
            fa_values.append(bio.getvalue())
        fa_enc += time.perf_counter() - t0
        del recs
    if fa_values != values:
        raise SystemExit("MISMATCH: batch encoder output differs from fastavro")
    del fa_values

    # ---- decode -------------------------------------------------------------------------------
    t0 = time.perf_counter()
    batch = dec.decode(values)
    ours_dec = time.perf_counter() - t0
    if batch.n_bad:
        raise SystemExit(f"decoder rejected {batch.n_bad} records")

    t0 = time.perf_counter()
    reader = fastavro.schemaless_reader
    out: list[Any] = []
    for v in values:
        bio = io.BytesIO(v)
        bio.seek(PREFIX_LEN)
        out.append(reader(bio, parsed, None))
    fa_dec = time.perf_counter() - t0
    last = out[-1]
    if last["seq"] != int(batch.columns["seq"][-1]) or last["price"] != float(batch.columns["price"][-1]):
        raise SystemExit("MISMATCH: decoded values differ from fastavro")
    del out

    res = {
        "n": n, "symbols": args.symbols, "bytes_per_record": sum(map(len, values)) / max(n, 1),
        "compile_s": round(compile_s, 3),
        "ours_decode_rps": n / ours_dec, "fastavro_decode_rps": n / fa_dec, "decode_ratio": fa_dec / ours_dec,
        "ours_encode_rps": n / ours_enc, "fastavro_encode_rps": n / fa_enc, "encode_ratio": fa_enc / ours_enc,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "fastavro": fastavro.__version__, "numpy": np.__version__,
    }
    print(f"Tick codec, n={n:,} ({res['bytes_per_record']:.1f} B/record), compile {compile_s:.2f} s")
    print(f"  decode: ours {res['ours_decode_rps']:>14,.0f} rec/s   fastavro {res['fastavro_decode_rps']:>12,.0f}"
          f" rec/s   ratio {res['decode_ratio']:.1f}x")
    print(f"  encode: ours {res['ours_encode_rps']:>14,.0f} rec/s   fastavro {res['fastavro_encode_rps']:>12,.0f}"
          f" rec/s   ratio {res['encode_ratio']:.1f}x")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
