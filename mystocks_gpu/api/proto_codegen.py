"""Generate the gateway's Python modules from ``mystocks_gpu/api/protos/*.proto`` with grpcio-tools
(``python -m mystocks_gpu.api.proto_codegen [--check]``).

The generated ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` are committed (installing needs no
protoc); ``--check`` (and the unit test) regenerates into a temporary folder and compares, ignoring
the lines that name the generator's version.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

PROTOS = Path(__file__).resolve().parent / "protos"
ROOT = PROTOS.parents[2]  # the folder holding the mystocks_gpu package: proto imports are relative to it
_VERSION_LINE = re.compile(r"(Protobuf Python Version|GRPC_GENERATED_VERSION|_version_not_supported|"
                           r"ValidateProtobufRuntimeVersion|^\s*\d+,\s*$|^\s*['\"][^'\"]*\.proto['\"]\s*$|"
                           r"^\s*['\"]['\"],?\s*$|EXPECTED_|_runtime_version|raise RuntimeError|"
                           r"f'The grpc package|\+ f'|\+ ')")


def generate(out_dir: Path) -> list[Path]:
    """Run grpcio-tools' protoc over every ``.proto``; returns the generated files."""
    from grpc_tools import protoc  # dev dependency (grpcio-tools)

    include = Path(protoc.__file__).resolve().parent / "_proto"
    rel = [str(p.relative_to(ROOT)) for p in sorted(PROTOS.glob("*.proto"))]
    args = ["protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}", *rel]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed ({rc}): {' '.join(args)}")
    return sorted(p for p in (out_dir / PROTOS.relative_to(ROOT)).glob("*_pb2*"))


def normalised(text: str) -> str:
    """The generated text without the lines that depend on the generator's version."""
    return "\n".join(line for line in text.splitlines() if not _VERSION_LINE.search(line))


def stale() -> list[str]:
    """The committed generated files that differ from a fresh generation (empty: current)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p for p in generate(Path(tmp))}
        committed = {p.name: p for p in PROTOS.glob("*_pb2*")}
        bad = sorted(set(fresh) ^ set(committed))
        for name in sorted(set(fresh) & set(committed)):
            if normalised(fresh[name].read_text()) != normalised(committed[name].read_text()):
                bad.append(name)
        return bad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only report stale generated files (exit 1)")
    args = p.parse_args(argv)
    if args.check:
        bad = stale()
        print("generated code is current" if not bad else "stale: " + ", ".join(bad))
        return 1 if bad else 0
    with tempfile.TemporaryDirectory() as tmp:
        for f in generate(Path(tmp)):
            shutil.copy(f, PROTOS / f.name)
            print(f"wrote {PROTOS / f.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
