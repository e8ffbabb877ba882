"""``mystocks-gpu models list | show | export``: the model registry (the compacted ``models`` topic)."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.config import Settings


def _fmt(v: Any) -> str:
    return "nan" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def cmd_models(args: argparse.Namespace, s: Settings) -> int:
    from mystocks_gpu.processors.training.model_registry import get_model, read_models
    from mystocks_gpu.schemas import schema_store

    store = schema_store(s)
    if args.action == "list":
        reg = read_models(s.kafka, args.topic, store=store)
        rows: list[dict[str, Any]] = []
        for name in sorted(reg):
            versions = reg[name]
            good = [v for v in sorted(versions) if versions[v].ok]
            mv = versions[good[-1]] if good else versions[max(versions)]
            meta: dict[str, Any] = mv.metadata
            metrics: dict[str, Any] = meta.get("metrics") or {}
            ov: dict[str, Any] = metrics.get("overall") or {}
            rows.append({"model": name, "version": mv.version, "versions": len(versions),
                         "failed": sum(not v.ok for v in versions.values()), "family": meta.get("family"),
                         "features": len(meta.get("features") or []), "sha256": mv.content_sha256,
                         "bytes": len(mv.blob), "rank_ic": ov.get("rank_ic_mean"), "icir": ov.get("rank_icir"),
                         "ts_ns": mv.ts_ns, "error": mv.error})
        if args.json:
            print(json.dumps(rows))
            return 0
        print(f"{'MODEL':<24} {'VER':>4} {'FAMILY':<13} {'FEAT':>4} {'BYTES':>9} {'RANK IC':>8} {'ICIR':>7}  SHA256")
        for r in rows:
            print(f"{r['model']:<24} {r['version']:>4} {str(r['family']):<13} {r['features']:>4} {r['bytes']:>9} "
                  f"{_fmt(r['rank_ic']):>8} {_fmt(r['icir']):>7}  {r['sha256'][:16]}"
                  + (f"  ({r['failed']} failed version(s))" if r["failed"] else ""))
        print(f"{len(rows)} model(s) on {args.topic}")
        return 0
    if not args.name:
        raise ConfigError(f"models {args.action} needs a model NAME")
    mv = get_model(s.kafka, args.name, args.version, args.topic, store=store)
    if args.action == "show":
        out = {"model": mv.name, "version": mv.version, "content_sha256": mv.content_sha256, "bytes": len(mv.blob),
               "parts": len(mv.raw), "published_ns": mv.ts_ns, "offset": mv.offset, "valid": mv.ok, "error": mv.error,
               "metadata": mv.metadata}
        print(json.dumps(out, indent=None if args.json else 2, sort_keys=True))
        return 0
    if not mv.ok:
        raise ConfigError(f"model {mv.name} v{mv.version} fails its checks, not exported: {mv.error}")
    if hashlib.sha256(mv.blob).hexdigest() != mv.content_sha256:  # checked on assembly; belt and braces
        raise ConfigError(f"model {mv.name} v{mv.version}: content hash mismatch")
    out_path = Path(args.out or f"{mv.name}-v{mv.version}.model")
    try:
        out_path.write_bytes(mv.blob)
        meta_path = out_path.with_name(out_path.name + ".json")
        meta_path.write_text(json.dumps({**mv.metadata, "content_sha256": mv.content_sha256}, indent=2, sort_keys=True))
    except OSError as exc:
        raise ConfigError(f"cannot write {out_path}: {exc.strerror}") from None
    print(f"exported {mv.name} v{mv.version} ({len(mv.blob)} bytes, sha256 {mv.content_sha256}) to {out_path}; "
          f"metadata in {meta_path}. Load it: mystocks_gpu.gpu_ops.models.load_model(path.read_bytes(), "
          f"expected_sha256='{mv.content_sha256}')")
    return 0


def add_commands(sub: Any) -> None:
    """Register ``models`` on the top-level parser."""
    sp = sub.add_parser("models", help="list/show/export trained models (the models topic)",
                        description="The model registry: versions on the compacted models topic, assembled from "
                                    "their parts and hash-checked.")
    sp.add_argument("action", choices=["list", "show", "export"])
    sp.add_argument("name", nargs="?", help="model name (show, export)")
    sp.add_argument("--version", type=int, default=None, help="a version (default: the newest valid one)")
    sp.add_argument("--out", help="export: file to write the serialised model to (default NAME-vV.model); the "
                                  "metadata goes next to it as FILE.json")
    sp.add_argument("--topic", default="models", help="registry topic (default models)")
    sp.add_argument("--json", action="store_true", help="JSON output")
    sp.set_defaults(func=cmd_models)
