"""Build ``security/pypa-advisories.json.gz``: a compact snapshot of the PyPA advisory database
(https://github.com/pypa/advisory-database, OSV format, CC-BY 4.0) for ``scripts/audit.py``'s
offline mode: per package, each advisory's id, aliases, ECOSYSTEM ranges and explicit versions.

    python scripts/advisory_snapshot.py PATH/TO/advisory-database [--commit SHA --date YYYY-MM-DD]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "security" / "pypa-advisories.json.gz"


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("db", type=Path, help="a checkout of pypa/advisory-database (its vulns/ folder is read)")
    ap.add_argument("--commit", default="", help="the database commit (recorded in the snapshot)")
    ap.add_argument("--date", default="", help="the database commit date (recorded in the snapshot)")
    args = ap.parse_args(argv)
    packages: dict[str, list[dict[str, object]]] = {}
    n = 0
    for f in sorted((args.db / "vulns").glob("*/*.yaml")):
        doc = yaml.safe_load(f.read_text())
        if doc.get("withdrawn"):
            continue
        for aff in doc.get("affected", []):
            pkg = aff.get("package", {})
            if pkg.get("ecosystem") != "PyPI":
                continue
            ranges = [[{k: str(v) for k, v in e.items()} for e in r.get("events", [])]
                      for r in aff.get("ranges", []) if r.get("type") == "ECOSYSTEM"]
            packages.setdefault(_norm(pkg["name"]), []).append(
                {"id": doc["id"], "aliases": doc.get("aliases", []), "ranges": ranges,
                 # explicit versions only where no range says it (OSV: affected = in a range or listed)
                 "versions": [] if ranges else [str(v) for v in aff.get("versions", [])],
                 "summary": (doc.get("summary") or doc.get("details") or "")[:200]})
            n += 1
    OUT.parent.mkdir(parents=True, exist_ok=True)
    data = {"source": "https://github.com/pypa/advisory-database", "license": "CC-BY-4.0",
            "commit": args.commit, "date": args.date, "advisories": n, "packages": packages}
    with gzip.open(OUT, "wt", compresslevel=9) as fh:
        json.dump(data, fh, separators=(",", ":"), sort_keys=True)
    print(f"{OUT}: {n} advisories for {len(packages)} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
