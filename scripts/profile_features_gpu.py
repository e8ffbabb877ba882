"""Run the GPU tick-feature engine once on synthetic ticks (for Nsight Compute, ``ncu``).

    ncu --clock-control none --kernel-name regex:fx_ --launch-count 12 \\
        python3 scripts/profile_features_gpu.py --ticks 2000000 --symbols 4000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from gpu_ops import make_ticks  # noqa: E402

from mystocks_gpu.gpu_ops.features import TickFeatureEngine  # noqa: E402
from mystocks_gpu.gpu_ops.features_config import FeatureConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ticks", type=int, default=2_000_000, help="ticks (default 2M)")
    ap.add_argument("--symbols", type=int, default=4000, help="symbols (default 4000)")
    args = ap.parse_args(argv)
    cols = make_ticks(args.ticks, args.symbols, 20.0, 1_000_000_000).to("gpu")
    eng = TickFeatureEngine(FeatureConfig(), "gpu")
    out, _ = eng.process(cols, eng.initial_state(args.symbols))
    print(f"processed {args.ticks:,} ticks: {len(out)} outputs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
